//! bora-formats
