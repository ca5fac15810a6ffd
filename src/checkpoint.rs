//! Checkpoints on disk: f32 tensors in safetensors files plus a JSON state,
//! written so that a kill at any moment leaves the previous checkpoint whole.
//!
//! A checkpoint is a folder. It is written as `<name>.tmp/` (every file
//! fsynced), then the old folder is renamed to `<name>.old/`, the new one to
//! `<name>/`, and `<name>.old/` is removed. A reader that finds no `<name>/`
//! but a complete `<name>.old/` (a kill between the two renames) uses that.

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A named f32 tensor to save.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        let t = NamedTensor {
            name: name.into(),
            shape,
            data,
        };
        debug_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        t
    }
}

/// Serializes tensors into safetensors bytes (little-endian f32).
pub fn safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let bytes: &[u8] = bytemuck::cast_slice(&t.data);
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes)?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// Tensors by name: (shape, data).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads every tensor of a safetensors file as f32, by name.
pub fn load_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_safetensors(&bytes, path)
}

/// The tensors of safetensors `bytes` (read from `path`, which errors name).
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<TensorMap> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor '{name}' is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces the file `path` by `bytes`: written and synced beside it first,
/// then renamed over it, so a reader sees the old contents or the new, never
/// a part.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes `files` (name, contents) as the folder `dir`, atomically replacing
/// any previous folder of that name.
pub fn write_dir_atomically(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let old = sibling(dir, ".old");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for (name, bytes) in files {
        write_synced(&tmp.join(name), bytes)?;
    }
    File::open(&tmp)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    if dir.exists() {
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    fs::rename(&tmp, dir).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The folder to read a checkpoint from: `dir`, or `dir.old` when a write was
/// interrupted between its two renames.
pub fn readable_dir(dir: &Path) -> Result<PathBuf> {
    if dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    let old = sibling(dir, ".old");
    if old.is_dir() {
        return Ok(old);
    }
    bail!(
        "no checkpoint at {}: the run has not written one yet (train with --checkpoint-every N)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dyntie-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = temp_dir("st");
        let t = vec![
            NamedTensor::new("a", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
            NamedTensor::new("b", vec![1], vec![f32::MIN_POSITIVE]),
        ];
        let path = dir.join("x.safetensors");
        fs::write(&path, safetensors_bytes(&t).unwrap()).unwrap();
        let back = load_safetensors(&path).unwrap();
        assert_eq!(back["a"], (vec![2, 3], t[0].data.clone()));
        assert_eq!(back["b"].1, t[1].data);
    }

    #[test]
    fn corrupt_safetensors_is_a_clear_error() {
        let dir = temp_dir("bad");
        let path = dir.join("model.safetensors");
        fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = format!("{:#}", load_safetensors(&path).unwrap_err());
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }

    #[test]
    fn atomic_replace_keeps_one_complete_checkpoint() {
        let dir = temp_dir("atomic").join("checkpoint");
        write_dir_atomically(&dir, &[("state.json", b"1".to_vec())]).unwrap();
        write_dir_atomically(&dir, &[("state.json", b"2".to_vec())]).unwrap();
        assert_eq!(fs::read(dir.join("state.json")).unwrap(), b"2");
        assert!(!sibling(&dir, ".tmp").exists() && !sibling(&dir, ".old").exists());

        // A kill after the first rename leaves only the old folder: it is used.
        fs::rename(&dir, sibling(&dir, ".old")).unwrap();
        let found = readable_dir(&dir).unwrap();
        assert_eq!(fs::read(found.join("state.json")).unwrap(), b"2");
        // A half-written .tmp folder never counts.
        fs::remove_dir_all(sibling(&dir, ".old")).unwrap();
        fs::create_dir_all(sibling(&dir, ".tmp")).unwrap();
        assert!(readable_dir(&dir).is_err());
    }
}
