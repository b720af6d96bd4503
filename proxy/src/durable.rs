//! Small state files under the data directory (quota usage, run-time rule
//! changes), written so that a crash leaves the old file or the new one,
//! never half of one.
use std::path::Path;

pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}
