//! The write-ahead log (issue 13): what intake has acknowledged lives here
//! on disk until every reader has acknowledged it. So far: the on-disk
//! record and segment formats.
pub mod format;
