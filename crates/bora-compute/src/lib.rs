//! bora-compute
