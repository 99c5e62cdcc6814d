//! Evaluation sets from the files a user brings: the benchmarks [`quarry_eval::datasets`] reads,
//! and a plain JSONL layout for anything else (the shapes world's splits use it).

use super::{EvalQuery, EvalSet, GalleryEntry, Scoring};

/// Flickr30K and COCO (Karpathy splits): text→image and image→text.
pub mod karpathy {
    use super::*;
    use quarry_eval::datasets::karpathy::KarpathyDataset;

    fn title(dataset: &KarpathyDataset) -> String {
        match dataset.dataset.as_deref() {
            Some("flickr30k") => "Flickr30K".into(),
            Some("coco") => "COCO".into(),
            Some(other) => crate::printable::printable(other, 40),
            None => "Karpathy".into(),
        }
    }

    /// Captions searching the images; a caption's image is its one correct answer.
    pub fn text_to_image(dataset: &KarpathyDataset) -> EvalSet {
        EvalSet {
            name: format!("{} {} text→image", title(dataset), dataset.split),
            key: format!("{}-{}-t2i", key_of(&title(dataset)), dataset.split),
            gallery: dataset.images.iter().map(|i| GalleryEntry { id: i.id.clone(), text: None, image: Some(i.path.clone()) }).collect(),
            queries: dataset
                .captions
                .iter()
                .map(|c| EvalQuery {
                    id: c.id.clone(),
                    text: Some(c.text.clone()),
                    captions: Vec::new(),
                    image: None,
                    reference: None,
                    relevant: vec![c.image_id.clone()],
                })
                .collect(),
            scoring: Scoring::Recall { drop_reference: false },
        }
    }

    /// Images searching the captions; any of an image's captions is a correct answer.
    pub fn image_to_text(dataset: &KarpathyDataset) -> EvalSet {
        let truth = dataset.image_to_text();
        EvalSet {
            name: format!("{} {} image→text", title(dataset), dataset.split),
            key: format!("{}-{}-i2t", key_of(&title(dataset)), dataset.split),
            gallery: dataset.captions.iter().map(|c| GalleryEntry { id: c.id.clone(), text: Some(c.text.clone()), image: None }).collect(),
            queries: dataset
                .images
                .iter()
                .map(|i| EvalQuery {
                    id: i.id.clone(),
                    text: None,
                    captions: Vec::new(),
                    image: Some(i.path.clone()),
                    reference: None,
                    relevant: truth.relevant(&i.id).map(|r| r.iter().cloned().collect()).unwrap_or_default(),
                })
                .collect(),
            scoring: Scoring::Recall { drop_reference: false },
        }
    }
}

fn key_of(name: &str) -> String {
    let key: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    key.trim_matches('-').chars().take(24).collect()
}

fn composed_set(dataset: &quarry_eval::datasets::ComposedDataset, scoring: Scoring, join: bool) -> EvalSet {
    EvalSet {
        name: format!("{} {}", dataset.benchmark, dataset.split),
        key: format!("{}-{}", key_of(&dataset.benchmark), key_of(&dataset.split)),
        gallery: dataset.gallery.iter().map(|i| GalleryEntry { id: i.id.clone(), text: None, image: Some(i.path.clone()) }).collect(),
        queries: dataset
            .queries
            .iter()
            .map(|q| EvalQuery {
                id: q.id.clone(),
                text: Some(q.texts.join(" and ")),
                captions: if join { q.texts.clone() } else { Vec::new() },
                image: Some(q.reference_path.clone()),
                reference: Some(q.reference_id.clone()),
                relevant: q.ground_truth.clone(),
            })
            .collect(),
        scoring,
    }
}

fn no_targets(dataset: &quarry_eval::datasets::ComposedDataset) -> anyhow::Error {
    anyhow::anyhow!(
        "{} {} ships no targets (a test split), so it cannot be scored here; evaluate a val split, or submit rankings to the benchmark's server",
        dataset.benchmark,
        dataset.split
    )
}

/// CIRR: Recall@K and Recall_subset@K.
pub mod cirr {
    use super::*;

    pub fn set(dataset: &quarry_eval::datasets::ComposedDataset) -> anyhow::Result<EvalSet> {
        let truth = dataset.cirr_truth().ok_or_else(|| no_targets(dataset))?;
        Ok(composed_set(dataset, Scoring::Cirr { truth }, false))
    }
}

/// CIRCO: mAP@K over every ground truth.
pub mod circo {
    use super::*;

    pub fn set(dataset: &quarry_eval::datasets::ComposedDataset) -> anyhow::Result<EvalSet> {
        let targets = dataset.target_truth().ok_or_else(|| no_targets(dataset))?;
        if !dataset.has_ground_truth() {
            return Err(no_targets(dataset));
        }
        Ok(composed_set(dataset, Scoring::Circo { targets }, false))
    }
}

/// FashionIQ: one set per category, two captions per query.
pub mod fashioniq {
    use super::*;

    pub fn set(dataset: &quarry_eval::datasets::ComposedDataset, category: &str) -> anyhow::Result<EvalSet> {
        if !dataset.has_ground_truth() {
            return Err(no_targets(dataset));
        }
        Ok(composed_set(dataset, Scoring::FashionIq { category: category.to_string() }, true))
    }
}

/// A plain layout for any gallery and queries: a folder holding `gallery.jsonl`
/// (`{"id", "text"?, "file"?}`) and `queries.jsonl` (`{"id", "text"?, "image"?, "reference"?,
/// "relevant": [ids]}`), image paths relative to a root folder. Scored by Recall@K; a query's
/// `reference` is left out of its ranking.
pub mod jsonl {
    use super::*;
    use anyhow::{Context as _, Result, bail};
    use serde::Deserialize;
    use std::collections::HashSet;
    use std::path::{Component, Path, PathBuf};

    /// Largest file read, so a wrong path cannot fill memory.
    const MAX_FILE_BYTES: u64 = 256 << 20;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GalleryLine {
        id: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        file: Option<String>,
        /// Kept with the item for people; strategies index `text` and `file`.
        #[serde(default)]
        #[allow(dead_code)]
        caption: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct QueryLine {
        id: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        image: Option<String>,
        #[serde(default)]
        reference: Option<String>,
        relevant: Vec<String>,
    }

    fn lines<T: serde::de::DeserializeOwned>(path: &Path, expected: &str) -> Result<Vec<T>> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if size > MAX_FILE_BYTES {
            bail!("{} is {size} bytes; eval reads files up to {MAX_FILE_BYTES}", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: expected {expected}", path.display(), n + 1)))
            .collect()
    }

    /// `relative` under `root`, refusing absolute paths and `..`.
    fn under(root: &Path, relative: &str, at: &str) -> Result<PathBuf> {
        let path = Path::new(relative);
        if relative.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            bail!("{at}: image path {:?} must be relative to {} and stay inside it", crate::printable::printable(relative, 80), root.display());
        }
        Ok(root.join(path))
    }

    /// The set in `folder`, image paths resolved against `root`.
    pub fn load(name: &str, key: &str, root: &Path, folder: &Path) -> Result<EvalSet> {
        let gallery_file = folder.join("gallery.jsonl");
        let queries_file = folder.join("queries.jsonl");
        let gallery: Vec<GalleryLine> = lines(&gallery_file, r#"{"id", "text"?, "file"?}"#)?;
        let queries: Vec<QueryLine> = lines(&queries_file, r#"{"id", "text"?, "image"?, "reference"?, "relevant": [ids]}"#)?;
        let mut ids = HashSet::new();
        let mut entries = Vec::with_capacity(gallery.len());
        for (n, g) in gallery.into_iter().enumerate() {
            let at = format!("{}:{}", gallery_file.display(), n + 1);
            crate::store::validate_item_id(&g.id).with_context(|| at.clone())?;
            if !ids.insert(g.id.clone()) {
                bail!("{at}: id {:?} appears twice", crate::printable::printable(&g.id, 80));
            }
            if g.text.is_none() && g.file.is_none() {
                bail!("{at}: a gallery line needs `text`, `file` or both");
            }
            let image = g.file.as_deref().map(|f| under(root, f, &at)).transpose()?;
            entries.push(GalleryEntry { id: g.id, text: g.text, image });
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(queries.len());
        for (n, q) in queries.into_iter().enumerate() {
            let at = format!("{}:{}", queries_file.display(), n + 1);
            if !seen.insert(q.id.clone()) {
                bail!("{at}: query id {:?} appears twice", crate::printable::printable(&q.id, 80));
            }
            if q.text.is_none() && q.image.is_none() {
                bail!("{at}: a query needs `text`, `image` or both");
            }
            if q.relevant.is_empty() {
                bail!("{at}: `relevant` is empty; every query needs at least one correct gallery id");
            }
            if let Some(missing) = q.relevant.iter().chain(&q.reference).find(|id| !ids.contains(*id)) {
                bail!("{at}: {:?} is not a gallery id", crate::printable::printable(missing, 80));
            }
            let image = q.image.as_deref().map(|f| under(root, f, &at)).transpose()?;
            out.push(EvalQuery { id: q.id, text: q.text, captions: Vec::new(), image, reference: q.reference, relevant: q.relevant });
        }
        if entries.is_empty() || out.is_empty() {
            bail!("{} needs at least one gallery line and one query", folder.display());
        }
        Ok(EvalSet { name: name.to_string(), key: key.to_string(), gallery: entries, queries: out, scoring: Scoring::Recall { drop_reference: true } })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn write(dir: &Path, gallery: &str, queries: &str) {
            std::fs::write(dir.join("gallery.jsonl"), gallery).unwrap();
            std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
        }

        #[test]
        fn reads_a_set_and_refuses_what_would_score_wrong() {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            write(d, "{\"id\": \"a\", \"file\": \"img/a.png\"}\n{\"id\": \"b\", \"text\": \"bee\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"reference\": \"a\", \"relevant\": [\"b\"]}\n");
            let set = load("mine", "mine", d, d).unwrap();
            assert_eq!(set.gallery[0].image.as_deref(), Some(d.join("img/a.png").as_path()));
            assert_eq!(set.queries[0].reference.as_deref(), Some("a"));
            assert_eq!(set.scoring, Scoring::Recall { drop_reference: true });

            let cases = [
                ("{\"id\": \"a\", \"file\": \"../a.png\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": [\"a\"]}\n", "stay inside"),
                ("{\"id\": \"a\", \"file\": \"/etc/passwd\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": [\"a\"]}\n", "stay inside"),
                ("{\"id\": \"a\", \"text\": \"t\"}\n{\"id\": \"a\", \"text\": \"u\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": [\"a\"]}\n", "appears twice"),
                ("{\"id\": \"a\", \"text\": \"t\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": [\"zz\"]}\n", "not a gallery id"),
                ("{\"id\": \"a\", \"text\": \"t\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": []}\n", "`relevant` is empty"),
                ("{\"id\": \"a\", \"text\": \"t\"}\n", "{\"id\": \"q\", \"relevant\": [\"a\"]}\n", "needs `text`, `image`"),
                ("{\"id\": \"a\", \"txt\": \"t\"}\n", "{\"id\": \"q\", \"text\": \"x\", \"relevant\": [\"a\"]}\n", "expected {\"id\""),
            ];
            for (gallery, queries, expected) in cases {
                write(d, gallery, queries);
                let err = format!("{:#}", load("mine", "mine", d, d).unwrap_err());
                assert!(err.contains(expected), "{gallery} {queries}: {err}");
            }
        }
    }
}
