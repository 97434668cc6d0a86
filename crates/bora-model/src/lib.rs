//! bora-model
