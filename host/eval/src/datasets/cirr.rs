//! CIRR (Composed Image Retrieval on Real-life images, Liu et al., ICCV 2021).
//!
//! Files, relative to the annotation folder (the dataset's `cirr/` folder):
//! - `captions/cap.rc2.<split>.json`: a list of `{"pairid", "reference", "target_hard",
//!   "target_soft": {id: score}, "caption", "img_set": {"id", "members": [...], ...}}`; the
//!   `test1` split has no `target_hard`/`target_soft`.
//! - `image_splits/split.rc2.<split>.json`: `{image name: relative path}`, e.g.
//!   `"dev-244-0-img0": "./dev/dev-244-0-img0.png"`; the gallery is every image listed here.
//!
//! Query ids are the `pairid`s as decimal strings; gallery ids are the image names. Only
//! `target_hard` is ground truth, as in CIRR's own evaluation; `target_soft` is not read.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use super::{
    ComposedDataset, ComposedQuery, GalleryImage, LoadError, MAX_FILE_BYTES, UniqueMap,
    check_image_dir, check_images_exist, invalid, read_json, resolve_under,
};
use crate::clip;

const EXPECTED_CAPTIONS: &str = r#"a list of {"pairid", "reference", "target_hard", "caption", "img_set": {"members": [...]}} objects (CIRR captions/cap.rc2.<split>.json)"#;
const EXPECTED_SPLIT: &str = r#"an object mapping image names to relative paths, e.g. {"dev-244-0-img0": "./dev/dev-244-0-img0.png"} (CIRR image_splits/split.rc2.<split>.json)"#;
const LAYOUT: &str = "the folder holding CIRR's train/, dev/ and test1/ (NLVR2 images, e.g. \
                      <image folder>/dev/dev-244-0-img0.png), which the paths in \
                      image_splits/split.rc2.<split>.json are relative to";

/// A CIRR split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CirrSplit {
    /// `train`.
    Train,
    /// `val`: the split papers report their own numbers on (its images are named `dev-*`).
    Val,
    /// `test1`: no targets; scored by CIRR's evaluation server.
    Test1,
}

impl CirrSplit {
    /// The split as the file names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CirrSplit::Train => "train",
            CirrSplit::Val => "val",
            CirrSplit::Test1 => "test1",
        }
    }

    fn has_targets(self) -> bool {
        self != CirrSplit::Test1
    }
}

impl fmt::Display for CirrSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CirrSplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(CirrSplit::Train),
            "val" => Ok(CirrSplit::Val),
            "test1" => Ok(CirrSplit::Test1),
            other => Err(format!(
                "unknown CIRR split {:?}: expected train, val or test1",
                clip(other)
            )),
        }
    }
}

#[derive(Deserialize)]
struct RawPair {
    pairid: u64,
    reference: String,
    #[serde(default)]
    target_hard: Option<String>,
    caption: String,
    img_set: RawImageSet,
}

#[derive(Deserialize)]
struct RawImageSet {
    members: Vec<String>,
}

/// Loads CIRR's `split` from `annotation_dir` (holding `captions/` and `image_splits/`),
/// resolving images against `image_dir`.
pub fn load(
    annotation_dir: &Path,
    image_dir: &Path,
    split: CirrSplit,
) -> Result<ComposedDataset, LoadError> {
    check_image_dir(image_dir, LAYOUT)?;
    let split_file = annotation_dir
        .join("image_splits")
        .join(format!("split.rc2.{split}.json"));
    let captions_file = annotation_dir
        .join("captions")
        .join(format!("cap.rc2.{split}.json"));

    let paths: UniqueMap<String> = read_json(&split_file, MAX_FILE_BYTES, EXPECTED_SPLIT)?;
    let mut gallery = Vec::with_capacity(paths.0.len());
    for (name, relative) in paths.0 {
        let path = resolve_under(image_dir, &relative).ok_or_else(|| {
            invalid(
                &split_file,
                format!(
                    "image {:?}: path {:?} is not a path inside the image folder",
                    clip(&name),
                    clip(&relative)
                ),
            )
        })?;
        gallery.push(GalleryImage {
            id: name,
            path,
            captions: Vec::new(),
        });
    }
    if gallery.is_empty() {
        return Err(invalid(&split_file, "lists no images".into()));
    }

    let pairs: Vec<RawPair> = read_json(&captions_file, MAX_FILE_BYTES, EXPECTED_CAPTIONS)?;
    let queries = queries(&captions_file, &split_file, &gallery, pairs, split)?;
    check_images_exist(image_dir, gallery.iter().map(|g| g.path.as_path()), LAYOUT)?;
    Ok(ComposedDataset {
        benchmark: "CIRR".into(),
        split: split.as_str().into(),
        gallery,
        queries,
    })
}

/// Turns the caption entries into queries, checking every image they name is in the split.
fn queries(
    captions_file: &Path,
    split_file: &Path,
    gallery: &[GalleryImage],
    pairs: Vec<RawPair>,
    split: CirrSplit,
) -> Result<Vec<ComposedQuery>, LoadError> {
    // The gallery is sorted by id (it came from a BTreeMap), so ids can be binary-searched.
    let find = |id: &str| {
        gallery
            .binary_search_by(|g| g.id.as_str().cmp(id))
            .ok()
            .map(|i| &gallery[i])
    };
    let unknown = |pairid: u64, role: &str, id: &str| {
        invalid(
            captions_file,
            format!(
                "pairid {pairid}: {role} {:?} is not listed in {}",
                clip(id),
                split_file.display()
            ),
        )
    };
    let mut seen = HashSet::with_capacity(pairs.len());
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        if !seen.insert(p.pairid) {
            return Err(invalid(
                captions_file,
                format!("pairid {} appears twice", p.pairid),
            ));
        }
        let reference =
            find(&p.reference).ok_or_else(|| unknown(p.pairid, "reference", &p.reference))?;
        if let Some(m) = p.img_set.members.iter().find(|m| find(m).is_none()) {
            return Err(unknown(p.pairid, "img_set member", m));
        }
        let target_id = if split.has_targets() {
            let target = p.target_hard.ok_or_else(|| {
                invalid(
                    captions_file,
                    format!(
                        "pairid {}: missing \"target_hard\" (only the test1 split comes without targets)",
                        p.pairid
                    ),
                )
            })?;
            if find(&target).is_none() {
                return Err(unknown(p.pairid, "target_hard", &target));
            }
            if target == p.reference {
                return Err(invalid(
                    captions_file,
                    format!("pairid {}: the target is the reference image", p.pairid),
                ));
            }
            if !p.img_set.members.contains(&target) {
                return Err(invalid(
                    captions_file,
                    format!(
                        "pairid {}: target_hard {:?} is not among img_set.members",
                        p.pairid,
                        clip(&target)
                    ),
                ));
            }
            Some(target)
        } else {
            None
        };
        out.push(ComposedQuery {
            id: p.pairid.to_string(),
            reference_path: reference.path.clone(),
            reference_id: p.reference,
            texts: vec![p.caption],
            shared_concept: None,
            ground_truth: target_id.iter().cloned().collect(),
            target_id,
            image_set: Some(p.img_set.members),
        });
    }
    if out.is_empty() {
        return Err(invalid(captions_file, "lists no pairs".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        for s in [CirrSplit::Train, CirrSplit::Val, CirrSplit::Test1] {
            assert_eq!(s.as_str().parse::<CirrSplit>(), Ok(s));
        }
        assert!("test".parse::<CirrSplit>().is_err());
        assert!(!CirrSplit::Test1.has_targets());
        assert!(CirrSplit::Val.has_targets());
    }
}
