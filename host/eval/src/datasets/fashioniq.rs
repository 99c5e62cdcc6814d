//! FashionIQ (Wu et al., CVPR 2021), one category at a time.
//!
//! Files, relative to the annotation folder:
//! - `captions/cap.<category>.<split>.json`: a list of `{"target", "candidate", "captions":
//!   [c1, c2]}`; the `test` split has no `target`.
//! - `image_splits/split.<category>.<split>.json`: a list of image names; the category's gallery.
//! - Images: `<name>.png` in the image folder, which may be `images/` itself or the folder
//!   holding it.
//!
//! The files give queries no id, so a query's id is `<category>-<index in the file>`
//! (`dress-0`, ...). The reference image is the `candidate`. Every target must be in the
//! category's gallery, as the common evaluation code (CLIP4Cir) asserts.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use super::{
    ComposedDataset, ComposedQuery, GalleryImage, LoadError, MAX_FILE_BYTES, check_image_dir,
    check_images_exist, check_unique, descend_if_present, invalid, is_plain_file_name, read_json,
};
use crate::clip;

const EXPECTED_CAPTIONS: &str = r#"a list of {"target", "candidate", "captions": [c1, c2]} objects (FashionIQ captions/cap.<category>.<split>.json)"#;
const EXPECTED_SPLIT: &str =
    "a list of image names (FashionIQ image_splits/split.<category>.<split>.json)";
const LAYOUT: &str = "<image folder>/<name>.png, e.g. images/B00006M009.png \
                      (the image folder may be images/ or the folder holding it)";

/// A FashionIQ category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FashionIqCategory {
    /// `dress`.
    Dress,
    /// `shirt`.
    Shirt,
    /// `toptee`.
    Toptee,
}

impl FashionIqCategory {
    /// The three categories, in the order papers list them.
    pub const ALL: [FashionIqCategory; 3] = [
        FashionIqCategory::Dress,
        FashionIqCategory::Shirt,
        FashionIqCategory::Toptee,
    ];

    /// The category as the file names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FashionIqCategory::Dress => "dress",
            FashionIqCategory::Shirt => "shirt",
            FashionIqCategory::Toptee => "toptee",
        }
    }
}

impl fmt::Display for FashionIqCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FashionIqCategory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown FashionIQ category {:?}: expected dress, shirt or toptee",
                    clip(s)
                )
            })
    }
}

/// A FashionIQ split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FashionIqSplit {
    /// `train`.
    Train,
    /// `val`: the split papers report on.
    Val,
    /// `test`: no targets.
    Test,
}

impl FashionIqSplit {
    /// The split as the file names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FashionIqSplit::Train => "train",
            FashionIqSplit::Val => "val",
            FashionIqSplit::Test => "test",
        }
    }
}

impl fmt::Display for FashionIqSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FashionIqSplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(FashionIqSplit::Train),
            "val" => Ok(FashionIqSplit::Val),
            "test" => Ok(FashionIqSplit::Test),
            other => Err(format!(
                "unknown FashionIQ split {:?}: expected train, val or test",
                clip(other)
            )),
        }
    }
}

#[derive(Deserialize)]
struct RawTriplet {
    #[serde(default)]
    target: Option<String>,
    candidate: String,
    captions: Vec<String>,
}

/// Loads one FashionIQ `category` and `split` from `annotation_dir` (holding `captions/` and
/// `image_splits/`), with images from `image_dir`.
pub fn load(
    annotation_dir: &Path,
    image_dir: &Path,
    category: FashionIqCategory,
    split: FashionIqSplit,
) -> Result<ComposedDataset, LoadError> {
    check_image_dir(image_dir, LAYOUT)?;
    let image_dir = descend_if_present(image_dir, "images");
    let split_file = annotation_dir
        .join("image_splits")
        .join(format!("split.{category}.{split}.json"));
    let captions_file = annotation_dir
        .join("captions")
        .join(format!("cap.{category}.{split}.json"));

    let names: Vec<String> = read_json(&split_file, MAX_FILE_BYTES, EXPECTED_SPLIT)?;
    if names.is_empty() {
        return Err(invalid(&split_file, "lists no images".into()));
    }
    if let Some(bad) = names.iter().find(|n| !is_plain_file_name(n)) {
        return Err(invalid(
            &split_file,
            format!("image name {:?} is not a plain file name", clip(bad)),
        ));
    }
    check_unique(&split_file, "image", names.iter().map(String::as_str))?;
    let in_gallery: HashSet<&str> = names.iter().map(String::as_str).collect();

    let triplets: Vec<RawTriplet> = read_json(&captions_file, MAX_FILE_BYTES, EXPECTED_CAPTIONS)?;
    if triplets.is_empty() {
        return Err(invalid(&captions_file, "lists no queries".into()));
    }
    let mut queries = Vec::with_capacity(triplets.len());
    for (index, t) in triplets.into_iter().enumerate() {
        let entry = |message: String| invalid(&captions_file, format!("entry {index}: {message}"));
        if !is_plain_file_name(&t.candidate) {
            return Err(entry(format!(
                "candidate {:?} is not a plain file name",
                clip(&t.candidate)
            )));
        }
        if t.captions.is_empty() {
            return Err(entry("\"captions\" is empty".into()));
        }
        let target_id = if split == FashionIqSplit::Test {
            None
        } else {
            let target = t.target.ok_or_else(|| {
                entry("missing \"target\" (only the test split comes without targets)".into())
            })?;
            if !in_gallery.contains(target.as_str()) {
                return Err(entry(format!(
                    "target {:?} is not listed in {}",
                    clip(&target),
                    split_file.display()
                )));
            }
            Some(target)
        };
        queries.push(ComposedQuery {
            id: format!("{category}-{index}"),
            reference_path: image_dir.join(format!("{}.png", t.candidate)),
            reference_id: t.candidate,
            texts: t.captions,
            shared_concept: None,
            ground_truth: target_id.iter().cloned().collect(),
            target_id,
            image_set: None,
        });
    }

    let mut gallery: Vec<GalleryImage> = names
        .into_iter()
        .map(|name| GalleryImage {
            path: image_dir.join(format!("{name}.png")),
            id: name,
            captions: Vec::new(),
        })
        .collect();
    gallery.sort_by(|a, b| a.id.cmp(&b.id));
    let needed = gallery
        .iter()
        .map(|g| g.path.as_path())
        .chain(queries.iter().map(|q| q.reference_path.as_path()));
    check_images_exist(&image_dir, needed, LAYOUT)?;
    Ok(ComposedDataset {
        benchmark: format!("FashionIQ {category}"),
        split: split.as_str().into(),
        gallery,
        queries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in FashionIqCategory::ALL {
            assert_eq!(c.as_str().parse::<FashionIqCategory>(), Ok(c));
        }
        for s in [
            FashionIqSplit::Train,
            FashionIqSplit::Val,
            FashionIqSplit::Test,
        ] {
            assert_eq!(s.as_str().parse::<FashionIqSplit>(), Ok(s));
        }
        assert!("shoes".parse::<FashionIqCategory>().is_err());
        assert!("dev".parse::<FashionIqSplit>().is_err());
    }
}
