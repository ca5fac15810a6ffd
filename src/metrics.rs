//! What a run leaves behind while it trains: JSON lines appended and flushed
//! one record at a time, so a crashed run still has everything up to the crash.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    /// Opens `path` for appending (creating it).
    pub fn append(path: &Path) -> Result<JsonlWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's length in bytes: what a checkpoint records, so that a
    /// resume can cut the file back to it.
    pub fn byte_len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .with_context(|| format!("cannot read the length of {}", self.path.display()))?
            .len())
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every JSON line of a file (a missing file reads as empty).
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let Ok(file) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {} is not valid JSON", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Keeps only the lines whose `step` is at most `step` (a resumed run drops
/// what was logged after its checkpoint, so the files match the model). The
/// kept lines are copied verbatim, so a resumed run's files are byte for byte
/// those of an uninterrupted one; a torn last line (a kill mid-write) is
/// dropped.
pub fn truncate_after_step(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut kept = String::new();
    for (i, line) in lines.iter().enumerate() {
        let record: serde_json::Value = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} line {} is not valid JSON", path.display(), i + 1)
                })
            }
        };
        if record.get("step").and_then(|s| s.as_u64()).unwrap_or(0) <= step {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    std::fs::write(path, kept).with_context(|| format!("cannot rewrite {}", path.display()))
}

/// Cuts the file at `path` back to `len` bytes (what a checkpoint saw of
/// it). A file shorter than that (lost with the machine's power before it
/// reached the disk) is kept as it is; the returned note says so.
pub fn truncate_to(path: &Path, len: u64) -> Result<Option<String>> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let now = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if now < len {
        return Ok(Some(format!(
            "warning: {} has {now} bytes, fewer than the {len} the checkpoint saw: lines were \
             lost (a crash of the machine?); the run continues with what is there",
            path.display()
        )));
    }
    file.set_len(len)
        .with_context(|| format!("cannot cut {} back to the checkpoint", path.display()))?;
    Ok(None)
}

/// `YYYYmmdd-HHMMSS` in UTC, for default run names.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(utc_timestamp().len(), 15);
    }

    #[test]
    fn jsonl_append_read_and_truncate() {
        let path =
            std::env::temp_dir().join(format!("dyntie-metrics-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut w = JsonlWriter::append(&path).unwrap();
        for step in 1..=5u64 {
            w.write(&serde_json::json!({ "step": step, "loss": 1.0 / step as f64 }))
                .unwrap();
        }
        truncate_after_step(&path, 3).unwrap();
        let back = read_jsonl(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2]["step"], 3);
    }
}
