//! The Datadog log search query language (being written).
