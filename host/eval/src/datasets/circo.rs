//! CIRCO (Composed Image Retrieval on Common Objects in context, Baldrati et al., ICCV 2023),
//! in the format of the official repository (`miccunifi/CIRCO`).
//!
//! - `annotations/<split>.json`: a list of `{"id", "reference_img_id", "target_img_id",
//!   "relative_caption", "shared_concept", "gt_img_ids": [...], "semantic_aspects": [...]}` with
//!   integer ids; the `test` split has no `target_img_id`/`gt_img_ids`.
//! - Images: COCO 2017 unlabeled, `unlabeled2017/<id as 12 zero-padded digits>.jpg`. The image
//!   folder may be `unlabeled2017/` itself or the folder holding it (CIRCO's
//!   `COCO2017_unlabeled/`).
//!
//! The gallery is every `<12 digits>.jpg` in that folder: all 123,403 images for the official
//! benchmark (fewer images make an easier, non-comparable benchmark). Ids are the integers as
//! decimal strings without padding (`"9761"`), as in CIRCO's submission files.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{
    ComposedDataset, ComposedQuery, GalleryImage, LoadError, MAX_FILE_BYTES, MAX_GALLERY_FILES,
    check_image_dir, descend_if_present, invalid, read_json,
};
use crate::clip;

const EXPECTED: &str = r#"a list of {"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept", "gt_img_ids": [...]} objects with integer ids (CIRCO annotations/<split>.json)"#;
const LAYOUT: &str = "COCO 2017 unlabeled images named by 12-digit zero-padded id, \
                      <image folder>/unlabeled2017/000000009761.jpg (or the unlabeled2017 folder itself)";

/// A CIRCO split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircoSplit {
    /// `val`: 220 queries with ground truth.
    Val,
    /// `test`: 800 queries without ground truth; scored by CIRCO's evaluation server.
    Test,
}

impl CircoSplit {
    /// The split as the file name spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CircoSplit::Val => "val",
            CircoSplit::Test => "test",
        }
    }
}

impl fmt::Display for CircoSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CircoSplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "val" => Ok(CircoSplit::Val),
            "test" => Ok(CircoSplit::Test),
            other => Err(format!(
                "unknown CIRCO split {:?}: expected val or test",
                clip(other)
            )),
        }
    }
}

#[derive(Deserialize)]
struct RawQuery {
    id: u64,
    reference_img_id: u64,
    #[serde(default)]
    target_img_id: Option<u64>,
    relative_caption: String,
    #[serde(default)]
    shared_concept: Option<String>,
    #[serde(default)]
    gt_img_ids: Option<Vec<u64>>,
}

/// The file name of COCO image `id`: 12 zero-padded digits and `.jpg`.
pub fn image_file_name(id: u64) -> String {
    format!("{id:012}.jpg")
}

/// The id of a gallery file name, when it is exactly 12 digits and `.jpg`.
fn id_of_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jpg")?;
    if digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Lists the gallery: every `<12 digits>.jpg` in `dir`, by id.
fn list_gallery(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, LoadError> {
    let io_err = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let Some(id) = entry.file_name().to_str().and_then(id_of_file_name) else {
            continue;
        };
        if out.len() >= MAX_GALLERY_FILES {
            return Err(invalid(
                dir,
                format!("holds more than {MAX_GALLERY_FILES} images"),
            ));
        }
        out.insert(id, entry.path());
    }
    Ok(out)
}

/// Loads CIRCO's `split` from `annotation_dir` (holding `annotations/`), with the gallery from
/// `image_dir`.
pub fn load(
    annotation_dir: &Path,
    image_dir: &Path,
    split: CircoSplit,
) -> Result<ComposedDataset, LoadError> {
    check_image_dir(image_dir, LAYOUT)?;
    let image_dir = descend_if_present(image_dir, "unlabeled2017");
    let file = annotation_dir
        .join("annotations")
        .join(format!("{split}.json"));
    let raw: Vec<RawQuery> = read_json(&file, MAX_FILE_BYTES, EXPECTED)?;
    if raw.is_empty() {
        return Err(invalid(&file, "lists no queries".into()));
    }
    let gallery = list_gallery(&image_dir)?;

    let mut seen = HashSet::with_capacity(raw.len());
    let mut queries = Vec::with_capacity(raw.len());
    let mut needed = Vec::new();
    for q in raw {
        if !seen.insert(q.id) {
            return Err(invalid(&file, format!("query id {} appears twice", q.id)));
        }
        let (target_id, ground_truth) = match split {
            CircoSplit::Val => {
                let (target, gt) = targets(&file, &q)?;
                needed.extend(gt.iter().copied());
                (Some(target), gt)
            }
            CircoSplit::Test => (None, Vec::new()),
        };
        needed.push(q.reference_img_id);
        queries.push(ComposedQuery {
            id: q.id.to_string(),
            reference_id: q.reference_img_id.to_string(),
            reference_path: image_dir.join(image_file_name(q.reference_img_id)),
            texts: vec![q.relative_caption],
            shared_concept: q.shared_concept,
            target_id: target_id.map(|t| t.to_string()),
            ground_truth: ground_truth.iter().map(u64::to_string).collect(),
            image_set: None,
        });
    }
    check_in_gallery(&image_dir, &gallery, &needed)?;
    Ok(ComposedDataset {
        benchmark: "CIRCO".into(),
        split: split.as_str().into(),
        gallery: gallery
            .into_iter()
            .map(|(id, path)| GalleryImage {
                id: id.to_string(),
                path,
                captions: Vec::new(),
            })
            .collect(),
        queries,
    })
}

/// A val query's target and ground truth, checked: both present, the ground truth non-empty,
/// without repeats, and holding the target.
fn targets(file: &Path, q: &RawQuery) -> Result<(u64, Vec<u64>), LoadError> {
    let missing = |key: &str| {
        invalid(
            file,
            format!(
                "query {}: missing {key:?} (only the test split comes without targets)",
                q.id
            ),
        )
    };
    let target = q.target_img_id.ok_or_else(|| missing("target_img_id"))?;
    let gt = q.gt_img_ids.clone().ok_or_else(|| missing("gt_img_ids"))?;
    let mut unique = HashSet::new();
    if let Some(repeat) = gt.iter().find(|id| !unique.insert(**id)) {
        return Err(invalid(
            file,
            format!("query {}: gt_img_ids lists {repeat} twice", q.id),
        ));
    }
    if !gt.contains(&target) {
        return Err(invalid(
            file,
            format!(
                "query {}: target_img_id {target} is not among gt_img_ids",
                q.id
            ),
        ));
    }
    Ok((target, gt))
}

/// Fails when an image the annotations need is not in the gallery folder.
fn check_in_gallery(
    image_dir: &Path,
    gallery: &BTreeMap<u64, PathBuf>,
    needed: &[u64],
) -> Result<(), LoadError> {
    let unique: HashSet<u64> = needed.iter().copied().collect();
    let mut missing: Vec<u64> = unique
        .iter()
        .copied()
        .filter(|id| !gallery.contains_key(id))
        .collect();
    missing.sort_unstable();
    match missing.first() {
        None => Ok(()),
        Some(&first) => Err(LoadError::MissingImages {
            image_dir: image_dir.to_owned(),
            missing: missing.len(),
            total: unique.len(),
            example: image_dir.join(image_file_name(first)),
            layout: LAYOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_twelve_zero_padded_digits() {
        assert_eq!(image_file_name(9761), "000000009761.jpg");
        assert_eq!(id_of_file_name("000000009761.jpg"), Some(9761));
        assert_eq!(id_of_file_name("000000009761.png"), None);
        assert_eq!(id_of_file_name("9761.jpg"), None);
        assert_eq!(id_of_file_name("00000000976a.jpg"), None);
        assert_eq!(id_of_file_name("+00000009761.jpg"), None);
    }

    #[test]
    fn split_names_round_trip() {
        for s in [CircoSplit::Val, CircoSplit::Test] {
            assert_eq!(s.as_str().parse::<CircoSplit>(), Ok(s));
        }
        assert!("train".parse::<CircoSplit>().is_err());
    }
}
