//! Exclusion rules: which events reach the index.
pub mod exclusion;
pub mod query;
