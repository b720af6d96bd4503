//! Exclusion rules: which events reach the index.
pub mod query;
