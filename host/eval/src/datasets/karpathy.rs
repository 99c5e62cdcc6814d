//! Flickr30K and COCO in Andrej Karpathy's split files (`dataset_flickr30k.json`,
//! `dataset_coco.json`), the splits image–text retrieval papers evaluate on.
//!
//! The file is `{"images": [...], "dataset": "flickr30k" | "coco"}`, each image
//! `{"filename", "split": "train" | "val" | "test" | "restval", "sentences": [{"raw", ...}],
//! "imgid", "sentids", "filepath" (COCO only), ...}`. Image ids are `imgid` and caption ids are
//! the matching `sentids` entry, both as decimal strings.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{
    GalleryImage, LoadError, MAX_FILE_BYTES, check_image_dir, check_images_exist, check_unique,
    invalid, is_plain_file_name, read_json, resolve_under,
};
use crate::clip;
use crate::metrics::GroundTruth;

const EXPECTED: &str = r#"a Karpathy split file: {"images": [{"filename", "split", "sentences": [{"raw", ...}], "imgid", "sentids", "filepath" (COCO only)}], "dataset": ...}"#;

const LAYOUT: &str = "Flickr30K: <image folder>/<filename> (the flickr30k-images folder); \
                      COCO: <image folder>/<filepath>/<filename>, e.g. <image folder>/val2014/COCO_val2014_000000391895.jpg";

/// A Karpathy split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KarpathySplit {
    /// `train`.
    Train,
    /// `val`.
    Val,
    /// `test`: the 1K (Flickr30K) or 5K (COCO) images papers report on.
    Test,
    /// `restval`: COCO's extra training images.
    Restval,
}

impl KarpathySplit {
    /// The split as the file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KarpathySplit::Train => "train",
            KarpathySplit::Val => "val",
            KarpathySplit::Test => "test",
            KarpathySplit::Restval => "restval",
        }
    }
}

impl fmt::Display for KarpathySplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KarpathySplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(KarpathySplit::Train),
            "val" => Ok(KarpathySplit::Val),
            "test" => Ok(KarpathySplit::Test),
            "restval" => Ok(KarpathySplit::Restval),
            other => Err(format!(
                "unknown Karpathy split {:?}: expected train, val, test or restval",
                clip(other)
            )),
        }
    }
}

/// One caption of a gallery image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// The caption id (`sentid`).
    pub id: String,
    /// The id of the image it describes.
    pub image_id: String,
    /// The caption text (`raw`).
    pub text: String,
}

/// One split of a Karpathy file: images with their captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KarpathyDataset {
    /// The file's `dataset` field (`flickr30k`, `coco`), when present.
    pub dataset: Option<String>,
    /// The split loaded.
    pub split: KarpathySplit,
    /// The split's images, in file order; each carries its captions' texts.
    pub images: Vec<GalleryImage>,
    /// The split's captions, in file order.
    pub captions: Vec<Caption>,
}

impl KarpathyDataset {
    /// Text→image ground truth: each caption id maps to the one image it describes.
    pub fn text_to_image(&self) -> GroundTruth {
        let mut gt = GroundTruth::new();
        for c in &self.captions {
            gt.insert(c.id.as_str(), [c.image_id.as_str()]);
        }
        gt
    }

    /// Image→text ground truth: each image id maps to all of its caption ids.
    pub fn image_to_text(&self) -> GroundTruth {
        let mut gt = GroundTruth::new();
        for image in &self.images {
            gt.insert(image.id.as_str(), Vec::<String>::new());
        }
        for c in &self.captions {
            gt.insert(c.image_id.as_str(), [c.id.as_str()]);
        }
        gt
    }
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<RawImage>,
    #[serde(default)]
    dataset: Option<String>,
}

#[derive(Deserialize)]
struct RawImage {
    filename: String,
    split: String,
    sentences: Vec<RawSentence>,
    imgid: u64,
    sentids: Vec<u64>,
    #[serde(default)]
    filepath: Option<String>,
}

#[derive(Deserialize)]
struct RawSentence {
    raw: String,
}

/// Loads `split` from a Karpathy file, resolving image paths against `image_dir`.
pub fn load(
    annotation_file: &Path,
    image_dir: &Path,
    split: KarpathySplit,
) -> Result<KarpathyDataset, LoadError> {
    load_with_limit(annotation_file, image_dir, split, MAX_FILE_BYTES)
}

fn load_with_limit(
    file: &Path,
    image_dir: &Path,
    split: KarpathySplit,
    limit: u64,
) -> Result<KarpathyDataset, LoadError> {
    check_image_dir(image_dir, LAYOUT)?;
    let raw: RawFile = read_json(file, limit, EXPECTED)?;
    let mut images = Vec::new();
    let mut captions = Vec::new();
    for image in raw.images.into_iter().filter(|i| i.split == split.as_str()) {
        let id = image.imgid.to_string();
        let path = image_path(file, image_dir, &image)?;
        if image.sentences.is_empty() {
            return Err(invalid(file, format!("image {id} has no sentences")));
        }
        if image.sentids.len() != image.sentences.len() {
            return Err(invalid(
                file,
                format!(
                    "image {id} has {} sentences but {} sentids",
                    image.sentences.len(),
                    image.sentids.len()
                ),
            ));
        }
        let texts: Vec<String> = image.sentences.into_iter().map(|s| s.raw).collect();
        for (sentid, text) in image.sentids.iter().zip(&texts) {
            captions.push(Caption {
                id: sentid.to_string(),
                image_id: id.clone(),
                text: text.clone(),
            });
        }
        images.push(GalleryImage {
            id,
            path,
            captions: texts,
        });
    }
    if images.is_empty() {
        return Err(invalid(
            file,
            format!("no image has \"split\": {:?}", split.as_str()),
        ));
    }
    check_unique(file, "imgid", images.iter().map(|i| i.id.as_str()))?;
    check_unique(file, "sentid", captions.iter().map(|c| c.id.as_str()))?;
    check_images_exist(image_dir, images.iter().map(|i| i.path.as_path()), LAYOUT)?;
    Ok(KarpathyDataset {
        dataset: raw.dataset,
        split,
        images,
        captions,
    })
}

/// `image_dir/[filepath/]filename`, refusing names that would leave the image folder.
fn image_path(file: &Path, image_dir: &Path, image: &RawImage) -> Result<PathBuf, LoadError> {
    let bad = |what: &str, value: &str| {
        invalid(
            file,
            format!(
                "image {}: {what} {:?} is not a path inside the image folder",
                image.imgid,
                clip(value)
            ),
        )
    };
    if !is_plain_file_name(&image.filename) {
        return Err(bad("filename", &image.filename));
    }
    let dir = match &image.filepath {
        Some(sub) => resolve_under(image_dir, sub).ok_or_else(|| bad("filepath", sub))?,
        None => image_dir.to_owned(),
    };
    Ok(dir.join(&image.filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "quarry-eval-karpathy-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        dir
    }

    fn write(dir: &Path, json: &str) -> PathBuf {
        let path = dir.join("dataset_flickr30k.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn split_names_round_trip() {
        for s in [
            KarpathySplit::Train,
            KarpathySplit::Val,
            KarpathySplit::Test,
            KarpathySplit::Restval,
        ] {
            assert_eq!(s.as_str().parse::<KarpathySplit>(), Ok(s));
        }
        assert!("dev".parse::<KarpathySplit>().is_err());
    }

    #[test]
    fn refuses_escaping_file_names_and_mismatched_sentids() {
        let dir = scratch("hostile");
        let images = dir.join("images");
        let file = write(
            &dir,
            r#"{"images": [{"filename": "../secret.jpg", "split": "test", "imgid": 0,
                "sentids": [0], "sentences": [{"raw": "a"}]}]}"#,
        );
        let err = load(&file, &images, KarpathySplit::Test).unwrap_err();
        assert!(err.to_string().contains("not a path inside"), "{err}");

        let file = write(
            &dir,
            r#"{"images": [{"filename": "a.jpg", "filepath": "/etc", "split": "test", "imgid": 0,
                "sentids": [0], "sentences": [{"raw": "a"}]}]}"#,
        );
        let err = load(&file, &images, KarpathySplit::Test).unwrap_err();
        assert!(err.to_string().contains("filepath"), "{err}");

        std::fs::write(images.join("a.jpg"), b"").unwrap();
        let file = write(
            &dir,
            r#"{"images": [{"filename": "a.jpg", "split": "test", "imgid": 0,
                "sentids": [0, 1], "sentences": [{"raw": "a"}]}]}"#,
        );
        let err = load(&file, &images, KarpathySplit::Test).unwrap_err();
        assert!(
            err.to_string().contains("1 sentences but 2 sentids"),
            "{err}"
        );

        let file = write(
            &dir,
            r#"{"images": [{"filename": "a.jpg", "split": "test", "imgid": 0, "sentids": [5],
                "sentences": [{"raw": "a"}]}, {"filename": "a.jpg", "split": "test", "imgid": 1,
                "sentids": [5], "sentences": [{"raw": "b"}]}]}"#,
        );
        let err = load(&file, &images, KarpathySplit::Test).unwrap_err();
        assert!(
            err.to_string().contains("sentid \"5\" appears twice"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_a_file_over_the_limit() {
        let dir = scratch("limit");
        let file = write(&dir, r#"{"images": []}"#);
        let err = load_with_limit(&file, &dir.join("images"), KarpathySplit::Test, 4).unwrap_err();
        assert!(matches!(err, LoadError::TooLarge { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
