//! Reading items to ingest from a folder or a JSONL file. A bad file or line is reported and
//! skipped; everything else is read.

use crate::models::preprocess;
use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An item to ingest, as the host receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub id: String,
    pub text: Option<String>,
    /// An encoded image (PNG, JPEG) that is known to decode.
    pub image: Option<Vec<u8>>,
    pub image_source: Option<String>,
    pub metadata: serde_json::Value,
}

impl NewItem {
    pub fn text(id: &str, text: &str) -> Self {
        NewItem { id: id.to_string(), text: Some(text.to_string()), image: None, image_source: None, metadata: serde_json::json!({}) }
    }

    /// A hash of everything a strategy sees of the item.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [self.text.as_deref().map(str::as_bytes), self.image.as_deref(), Some(self.metadata.to_string().as_bytes())] {
            match part {
                Some(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
                None => h.update(u64::MAX.to_le_bytes()),
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What could not be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// A file path, or `file:line` for JSONL.
    pub source: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct SourceItems {
    pub items: Vec<NewItem>,
    pub skipped: Vec<Skipped>,
}

const TEXT_EXTENSIONS: &[&str] = &["txt", "md"];
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Read a folder (recursively) or a `.jsonl` file.
///
/// In a folder, files sharing a stem form one item: `cat.txt` is the text and `cat.png` the
/// image of item `cat` (ids are paths relative to the folder, without extension).
pub fn read(path: &Path) -> Result<SourceItems> {
    if path.is_dir() {
        read_folder(path)
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(path)
    } else if path.exists() {
        bail!("{} is neither a folder nor a .jsonl file", path.display())
    } else {
        bail!("{} does not exist", path.display())
    }
}

/// A file's contribution to its item, read and checked off the main thread.
enum Loaded {
    Text(String),
    Image(Vec<u8>),
    Skip(String),
}

fn load(file: &Path) -> Loaded {
    let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    if TEXT_EXTENSIONS.contains(&ext.as_str()) {
        match std::fs::read_to_string(file) {
            Ok(text) => Loaded::Text(text.trim().to_string()),
            Err(e) => Loaded::Skip(format!("cannot read as UTF-8 text: {e}")),
        }
    } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        match std::fs::read(file).map_err(anyhow::Error::from).and_then(|b| preprocess::decode(&b).map(|_| b)) {
            Ok(bytes) => Loaded::Image(bytes),
            Err(e) => Loaded::Skip(format!("unreadable image: {e:#}")),
        }
    } else {
        Loaded::Skip(format!(
            "unsupported file type; text items are {} files, images {} files",
            TEXT_EXTENSIONS.join("/"),
            IMAGE_EXTENSIONS.join("/")
        ))
    }
}

/// `f` over `items` on every core, results in input order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = items.chunks(chunk).map(|c| scope.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        workers.into_iter().flat_map(|w| w.join().expect("a file reader panicked")).collect()
    })
}

fn read_folder(root: &Path) -> Result<SourceItems> {
    let mut files = Vec::new();
    collect_files(root, &mut files)?;
    files.sort();
    // Reading and decoding (the slow part for images) run in parallel; merging is in file order.
    let loaded = parallel_map(&files, |f| load(f));
    let mut out = SourceItems::default();
    let mut by_id: BTreeMap<String, NewItem> = BTreeMap::new();
    for (file, loaded) in files.iter().zip(loaded) {
        let id = file.strip_prefix(root).unwrap_or(file).with_extension("").to_string_lossy().replace('\\', "/");
        match loaded {
            Loaded::Text(text) => by_id.entry(id.clone()).or_insert_with(|| empty(&id)).text = Some(text),
            Loaded::Image(bytes) => {
                let item = by_id.entry(id.clone()).or_insert_with(|| empty(&id));
                item.image = Some(bytes);
                item.image_source = Some(file.display().to_string());
            }
            Loaded::Skip(reason) => out.skipped.push(Skipped { source: file.display().to_string(), reason }),
        }
    }
    out.items = by_id.into_values().collect();
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn empty(id: &str) -> NewItem {
    NewItem { id: id.to_string(), text: None, image: None, image_source: None, metadata: serde_json::json!({}) }
}

/// One JSONL line: `{"id": "...", "text": "...", "image": "relative/path.png", "metadata": {...}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Option<String>,
    text: Option<String>,
    image: Option<PathBuf>,
    #[serde(default)]
    metadata: serde_json::Value,
}

fn read_jsonl(path: &Path) -> Result<SourceItems> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = SourceItems::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = format!("{}:{}", path.display(), n + 1);
        let parsed: Line = match serde_json::from_str(line) {
            Ok(l) => l,
            Err(e) => {
                out.skipped.push(Skipped { source, reason: format!("not a valid item line ({e}); expected {{\"id\", \"text\", \"image\", \"metadata\"}}") });
                continue;
            }
        };
        let mut item = empty(&parsed.id.unwrap_or_else(|| format!("line-{}", n + 1)));
        item.text = parsed.text;
        item.metadata = if parsed.metadata.is_null() { serde_json::json!({}) } else { parsed.metadata };
        if let Some(image) = parsed.image {
            let image_path = if image.is_absolute() { image } else { base.join(image) };
            match std::fs::read(&image_path).map_err(anyhow::Error::from).and_then(|b| preprocess::decode(&b).map(|_| b)) {
                Ok(bytes) => {
                    item.image = Some(bytes);
                    item.image_source = Some(image_path.display().to_string());
                }
                Err(e) => {
                    out.skipped.push(Skipped { source, reason: format!("unreadable image {}: {e:#}", image_path.display()) });
                    continue;
                }
            }
        }
        if item.text.is_none() && item.image.is_none() {
            out.skipped.push(Skipped { source, reason: "the line has neither `text` nor `image`".into() });
            continue;
        }
        out.items.push(item);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn folder_pairs_text_and_images_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cat.txt"), "a cat\n").unwrap();
        std::fs::write(dir.path().join("cat.png"), png()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/dog.md"), "a dog").unwrap();
        std::fs::write(dir.path().join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        std::fs::write(dir.path().join("notes.pdf"), b"%PDF").unwrap();
        let read = read(dir.path()).unwrap();
        let ids: Vec<&str> = read.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["cat", "sub/dog"]);
        assert_eq!(read.items[0].text.as_deref(), Some("a cat"));
        assert!(read.items[0].image.is_some());
        assert_eq!(read.skipped.len(), 2);
        assert!(read.skipped[0].source.ends_with("broken.png") && read.skipped[0].reason.contains("unreadable image"));
        assert!(read.skipped[1].reason.contains("unsupported file type"));
    }

    #[test]
    fn jsonl_reads_good_lines_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        std::fs::write(&path, "{\"id\": \"a\", \"text\": \"alpha\", \"metadata\": {\"lang\": \"en\"}}\nnot json\n{\"text\": \"beta\"}\n{\"id\": \"c\"}\n").unwrap();
        let read = read(&path).unwrap();
        assert_eq!(read.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "line-3"]);
        assert_eq!(read.items[0].metadata["lang"], "en");
        assert_eq!(read.skipped.iter().map(|s| s.source.rsplit(':').next().unwrap()).collect::<Vec<_>>(), ["2", "4"]);
    }
}
