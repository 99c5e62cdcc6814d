//! Loaders for the benchmark files a user brings, each checked against its image folder.
//!
//! | benchmark | module | annotation files | image folder |
//! |---|---|---|---|
//! | Flickr30K, COCO (Karpathy split) | [`karpathy`] | `dataset_flickr30k.json`, `dataset_coco.json` | Flickr: the folder holding the `.jpg`s; COCO: the folder holding `train2014/`, `val2014/` |
//! | CIRR | [`cirr`] | `captions/cap.rc2.<split>.json`, `image_splits/split.rc2.<split>.json` | the folder holding `train/`, `dev/`, `test1/` |
//! | CIRCO | [`circo`] | `annotations/<split>.json` | `unlabeled2017/` (or the folder holding it) |
//! | FashionIQ | [`fashioniq`] | `captions/cap.<category>.<split>.json`, `image_splits/split.<category>.<split>.json` | `images/` (or the folder holding it) |
//!
//! Every loader reads at most [`MAX_FILE_BYTES`] per file, refuses image paths that would leave
//! the image folder, checks that every image it returns exists, and reports errors with the
//! file and what is wrong in it.

pub mod circo;
pub mod cirr;
pub mod fashioniq;
pub mod karpathy;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::path::{Component, Path, PathBuf};

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::clip;
use crate::metrics::{CirrTruth, GroundTruth};

/// The largest annotation file a loader reads: 1 GiB. The largest real one, `dataset_coco.json`,
/// is about 150 MB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// How many image files a folder listing may hold before a loader refuses it (CIRCO's gallery,
/// COCO 2017 unlabeled, has 123,403).
pub const MAX_GALLERY_FILES: usize = 10_000_000;

/// Why a dataset could not be loaded. Every variant names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is larger than the loader accepts.
    #[error("{} is {size} bytes, over the limit of {limit} bytes for an annotation file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, or the bytes read before giving up.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not JSON of the expected shape (a missing key, a wrong type, bad syntax).
    #[error("{}: {source}; expected {expected}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: serde_json::Error,
        /// The shape the file should have.
        expected: &'static str,
    },
    /// The file parses but its content is inconsistent (a duplicate id, an unknown image, ...).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        message: String,
    },
    /// The image folder does not exist or is not a folder.
    #[error("the image folder {} is not a folder; expected layout: {layout}", path.display())]
    NoImageFolder {
        /// The folder given.
        path: PathBuf,
        /// The layout the loader expects.
        layout: &'static str,
    },
    /// Images the annotations refer to are not in the image folder.
    #[error(
        "{missing} of {total} images are missing from the image folder {}, for example {}; expected layout: {layout}",
        image_dir.display(),
        example.display()
    )]
    MissingImages {
        /// The image folder.
        image_dir: PathBuf,
        /// How many images are missing.
        missing: usize,
        /// How many images were looked for.
        total: usize,
        /// The first missing image's path.
        example: PathBuf,
        /// The layout the loader expects.
        layout: &'static str,
    },
}

/// One gallery image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GalleryImage {
    /// The id that ranked lists and ground truth use.
    pub id: String,
    /// The image file, resolved against the image folder.
    pub path: PathBuf,
    /// The image's captions, where the benchmark has them (Flickr30K, COCO); empty otherwise.
    pub captions: Vec<String>,
}

/// One composed-retrieval query: a reference image plus text, answered by gallery images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedQuery {
    /// The query id (CIRR `pairid`, CIRCO `id`, FashionIQ `<category>-<index>`).
    pub id: String,
    /// The reference image's id.
    pub reference_id: String,
    /// The reference image file.
    pub reference_path: PathBuf,
    /// The modification text(s): one for CIRR and CIRCO, two for FashionIQ.
    pub texts: Vec<String>,
    /// CIRCO's `shared_concept`, the concept reference and target share; `None` elsewhere.
    pub shared_concept: Option<String>,
    /// The target the text was written for; `None` on test splits, which ship no targets.
    pub target_id: Option<String>,
    /// Every correct answer: CIRCO's `gt_img_ids`, else just the target; empty on test splits.
    pub ground_truth: Vec<String>,
    /// CIRR's `img_set.members` (the reference among them), for Recall_subset; `None` elsewhere.
    pub image_set: Option<Vec<String>>,
}

/// A composed-retrieval benchmark split: the gallery to rank and the queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedDataset {
    /// The benchmark, e.g. `CIRR`, `CIRCO`, `FashionIQ dress`.
    pub benchmark: String,
    /// The split, as its files name it (`val`, `test1`, ...).
    pub split: String,
    /// The images to rank, sorted by id (CIRCO's numerically, the others' as strings).
    pub gallery: Vec<GalleryImage>,
    /// The queries, in file order.
    pub queries: Vec<ComposedQuery>,
}

impl ComposedDataset {
    /// Whether the split ships targets (false for the test splits).
    pub fn has_ground_truth(&self) -> bool {
        !self.queries.is_empty() && self.queries.iter().all(|q| q.target_id.is_some())
    }

    /// Every correct answer of every query (CIRCO's mAP uses this); `None` without targets.
    pub fn ground_truth(&self) -> Option<GroundTruth> {
        if !self.has_ground_truth() {
            return None;
        }
        let mut gt = GroundTruth::new();
        for q in &self.queries {
            gt.insert(q.id.as_str(), q.ground_truth.iter().map(String::as_str));
        }
        Some(gt)
    }

    /// Only the target of every query (Recall@K on CIRCO counts the target alone); `None`
    /// without targets.
    pub fn target_truth(&self) -> Option<GroundTruth> {
        let mut gt = GroundTruth::new();
        for q in &self.queries {
            gt.insert(q.id.as_str(), [q.target_id.as_deref()?]);
        }
        (!gt.is_empty()).then_some(gt)
    }

    /// The truth CIRR's Recall@K and Recall_subset@K need; `None` without targets or without
    /// image sets.
    pub fn cirr_truth(&self) -> Option<BTreeMap<String, CirrTruth>> {
        let mut out = BTreeMap::new();
        for q in &self.queries {
            out.insert(
                q.id.clone(),
                CirrTruth {
                    reference_id: q.reference_id.clone(),
                    target_id: q.target_id.clone()?,
                    image_set: q.image_set.clone()?,
                },
            );
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Reads `path` whole, refusing anything that is not a regular file or is over `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let io_err = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(LoadError::Invalid {
            path: path.to_owned(),
            message: "not a regular file".into(),
        });
    }
    if meta.len() > limit {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            limit,
        });
    }
    // The size can change between the check and the read; `take` bounds the read regardless.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Reads and parses a JSON annotation file of at most `limit` bytes.
fn read_json<T: DeserializeOwned>(
    path: &Path,
    limit: u64,
    expected: &'static str,
) -> Result<T, LoadError> {
    let bytes = read_bounded(path, limit)?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
        path: path.to_owned(),
        source,
        expected,
    })
}

fn invalid(path: &Path, message: String) -> LoadError {
    LoadError::Invalid {
        path: path.to_owned(),
        message,
    }
}

/// Checks that `dir` is a folder.
fn check_image_dir(dir: &Path, layout: &'static str) -> Result<(), LoadError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(LoadError::NoImageFolder {
            path: dir.to_owned(),
            layout,
        })
    }
}

/// `dir/sub` when that is a folder, else `dir`: lets a user point at either the image folder
/// itself or the dataset folder holding it.
fn descend_if_present(dir: &Path, sub: &str) -> PathBuf {
    let inner = dir.join(sub);
    if inner.is_dir() {
        inner
    } else {
        dir.to_owned()
    }
}

/// Joins a relative path from an annotation file onto `dir`, or `None` when it is absolute,
/// empty, or climbs out with `..` (a hostile file must not point the evaluator elsewhere).
fn resolve_under(dir: &Path, relative: &str) -> Option<PathBuf> {
    let rel = Path::new(relative);
    let mut out = dir.to_owned();
    let mut any = false;
    for component in rel.components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                any = true;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    any.then_some(out)
}

/// Whether `name` is usable as a single file name: non-empty, no separators, not `.`/`..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.contains('\0')
}

/// Checks that every path exists as a file; reports how many (distinct) do not and the first.
fn check_images_exist<'a>(
    image_dir: &Path,
    paths: impl IntoIterator<Item = &'a Path>,
    layout: &'static str,
) -> Result<(), LoadError> {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    let mut missing = 0usize;
    let mut example = None;
    for path in paths {
        if !seen.insert(path) {
            continue;
        }
        total += 1;
        if !path.is_file() {
            missing += 1;
            example.get_or_insert_with(|| path.to_owned());
        }
    }
    match example {
        None => Ok(()),
        Some(example) => Err(LoadError::MissingImages {
            image_dir: image_dir.to_owned(),
            missing,
            total,
            example,
            layout,
        }),
    }
}

/// Fails on the first id seen twice, naming it.
fn check_unique<'a>(
    path: &Path,
    what: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), LoadError> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(invalid(
                path,
                format!("{what} {:?} appears twice", clip(id)),
            ));
        }
    }
    Ok(())
}

/// A JSON object read into a map that, unlike a plain `BTreeMap`, refuses a repeated key
/// instead of silently keeping the last value.
#[derive(Debug)]
struct UniqueMap<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "key {:?} appears twice",
                            clip(&key)
                        )));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quarry-eval-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn read_bounded_refuses_files_over_the_limit() {
        let dir = scratch("bounded");
        let path = dir.join("a.json");
        std::fs::write(&path, b"[1, 2, 3]").unwrap();
        assert_eq!(read_bounded(&path, 9).unwrap(), b"[1, 2, 3]");
        let err = read_bounded(&path, 8).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::TooLarge {
                    size: 9,
                    limit: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("a.json"), "{err}");
        let err = read_bounded(&dir, 100).unwrap_err();
        assert!(
            err.to_string().contains("not a regular file") || matches!(err, LoadError::Io { .. })
        );
        let err = read_bounded(&dir.join("absent.json"), 100).unwrap_err();
        assert!(matches!(err, LoadError::Io { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn resolve_under_refuses_escapes() {
        let dir = Path::new("/data/imgs");
        assert_eq!(
            resolve_under(dir, "./dev/a.png"),
            Some(PathBuf::from("/data/imgs/dev/a.png"))
        );
        assert_eq!(resolve_under(dir, "../etc/passwd"), None);
        assert_eq!(resolve_under(dir, "dev/../../x"), None);
        assert_eq!(resolve_under(dir, "/etc/passwd"), None);
        assert_eq!(resolve_under(dir, ""), None);
        assert_eq!(resolve_under(dir, "./"), None);
    }

    #[test]
    fn plain_file_names() {
        assert!(is_plain_file_name("B00ABC"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn unique_map_refuses_repeated_keys() {
        let ok: UniqueMap<u32> = serde_json::from_str(r#"{"a": 1, "b": 2}"#).unwrap();
        assert_eq!(ok.0.len(), 2);
        let err = serde_json::from_str::<UniqueMap<u32>>(r#"{"a": 1, "a": 2}"#).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(serde_json::from_str::<UniqueMap<u32>>("[1]").is_err());
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let dir = scratch("nested");
        let path = dir.join("deep.json");
        std::fs::write(&path, "[".repeat(100_000)).unwrap();
        let err = read_json::<Vec<serde_json::Value>>(&path, MAX_FILE_BYTES, "a list").unwrap_err();
        assert!(matches!(err, LoadError::Json { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
