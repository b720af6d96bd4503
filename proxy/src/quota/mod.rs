//! Quotas: how fast a tenant may send (rate limits, refused early with 429)
//! and how much it may index per day (daily quotas, after exclusion rules).
pub mod daily;
pub mod rate;
pub mod shared;
