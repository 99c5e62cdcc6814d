//! The loaders on small fixture files in each benchmark's real format (tests/fixtures/), end to
//! end with the metrics, plus broken copies of them.

use std::fs;
use std::path::{Path, PathBuf};

use quarry_eval::datasets::circo::{self, CircoSplit};
use quarry_eval::datasets::cirr::{self, CirrSplit};
use quarry_eval::datasets::fashioniq::{self, FashionIqCategory, FashionIqSplit};
use quarry_eval::datasets::karpathy::{self, KarpathySplit};
use quarry_eval::datasets::{ComposedDataset, LoadError};
use quarry_eval::metrics::{
    FashionIqCategoryRuns, Ranked, cirr_recall_at_k, cirr_recall_subset_at_k, fashioniq_scores,
    map_at_k, recall_at_k,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A private, writable copy of one fixture folder, for tests that break files.
fn scratch_copy(fixture: &str, test: &str) -> PathBuf {
    let dest = std::env::temp_dir().join(format!("quarry-eval-it-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dest);
    copy_dir(&fixtures().join(fixture), &dest);
    dest
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---------------------------------------------------------------- Karpathy

#[test]
fn flickr30k_test_split() {
    let dir = fixtures().join("karpathy");
    let images = dir.join("flickr30k-images");
    let ds = karpathy::load(
        &dir.join("dataset_flickr30k.json"),
        &images,
        KarpathySplit::Test,
    )
    .unwrap();
    assert_eq!(ds.dataset.as_deref(), Some("flickr30k"));
    let ids: Vec<&str> = ds.images.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"]);
    assert_eq!(ds.images[0].path, images.join("100002.jpg"));
    assert_eq!(
        ds.images[0].captions,
        [
            "A man rides a red bicycle down a street.",
            "A cyclist on a city road."
        ]
    );
    let caption_ids: Vec<(&str, &str)> = ds
        .captions
        .iter()
        .map(|c| (c.id.as_str(), c.image_id.as_str()))
        .collect();
    assert_eq!(
        caption_ids,
        [("2", "1"), ("3", "1"), ("4", "2"), ("5", "2")]
    );

    let t2i = ds.text_to_image();
    assert_eq!(t2i.len(), 4);
    assert!(t2i.relevant("4").unwrap().contains("2"));
    let i2t = ds.image_to_text();
    assert_eq!(i2t.len(), 2);
    let rel: Vec<&str> = i2t
        .relevant("1")
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(rel, ["2", "3"]);

    // Text→image: captions 2, 3 find image 1 first; 4 finds image 2 second; 5 misses (absent).
    let runs = vec![
        Ranked::new("2", ["1", "2"]),
        Ranked::new("3", ["1"]),
        Ranked::new("4", ["1", "2"]),
        Ranked::new("5", ["9"]),
    ];
    assert!(close(recall_at_k(&runs, &t2i, 1).unwrap(), 0.5));
    assert!(close(recall_at_k(&runs, &t2i, 5).unwrap(), 0.75));
}

#[test]
fn flickr30k_val_and_train_splits_are_separate() {
    let dir = fixtures().join("karpathy");
    let images = dir.join("flickr30k-images");
    let file = dir.join("dataset_flickr30k.json");
    let val = karpathy::load(&file, &images, KarpathySplit::Val).unwrap();
    assert_eq!(val.images.len(), 1);
    assert_eq!(val.images[0].path, images.join("100004.jpg"));
    let train = karpathy::load(&file, &images, KarpathySplit::Train).unwrap();
    assert_eq!(train.images[0].id, "0");
    // Flickr30K has no restval split.
    let err = karpathy::load(&file, &images, KarpathySplit::Restval).unwrap_err();
    assert!(
        err.to_string()
            .contains("no image has \"split\": \"restval\""),
        "{err}"
    );
}

#[test]
fn coco_resolves_filepath() {
    let dir = fixtures().join("karpathy");
    let images = dir.join("coco");
    let file = dir.join("dataset_coco.json");
    let ds = karpathy::load(&file, &images, KarpathySplit::Test).unwrap();
    assert_eq!(ds.dataset.as_deref(), Some("coco"));
    let paths: Vec<&Path> = ds.images.iter().map(|i| i.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            images.join("val2014/COCO_val2014_000000000042.jpg"),
            images.join("val2014/COCO_val2014_000000000073.jpg")
        ]
    );
    assert_eq!(ds.captions.len(), 5);
    assert_eq!(ds.image_to_text().relevant("0").unwrap().len(), 3);
    let restval = karpathy::load(&file, &images, KarpathySplit::Restval).unwrap();
    assert_eq!(restval.images[0].id, "3");
    let train = karpathy::load(&file, &images, KarpathySplit::Train).unwrap();
    assert_eq!(
        train.images[0].path,
        images.join("train2014/COCO_train2014_000000000009.jpg")
    );
}

#[test]
fn karpathy_errors_name_the_file_and_the_layout() {
    let dir = scratch_copy("karpathy", "karpathy-errors");
    let file = dir.join("dataset_coco.json");
    // The image folder given is one level too deep: val2014/val2014/... does not exist.
    let err = karpathy::load(&file, &dir.join("coco/val2014"), KarpathySplit::Test).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LoadError::MissingImages {
                missing: 2,
                total: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("<filepath>/<filename>"), "{msg}");

    fs::remove_file(dir.join("coco/val2014/COCO_val2014_000000000073.jpg")).unwrap();
    let err = karpathy::load(&file, &dir.join("coco"), KarpathySplit::Test).unwrap_err();
    assert!(
        err.to_string().contains("COCO_val2014_000000000073.jpg"),
        "{err}"
    );

    let err = karpathy::load(&file, &dir.join("nowhere"), KarpathySplit::Test).unwrap_err();
    assert!(matches!(err, LoadError::NoImageFolder { .. }), "{err}");

    fs::write(
        &file,
        r#"{"images": [{"filename": "a.jpg", "split": "test"}]}"#,
    )
    .unwrap();
    let msg = karpathy::load(&file, &dir.join("coco"), KarpathySplit::Test)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dataset_coco.json"), "{msg}");
    assert!(msg.contains("missing field `sentences`"), "{msg}");

    fs::write(&file, r#"{"images": [{"filename": 7}]}"#).unwrap();
    let msg = karpathy::load(&file, &dir.join("coco"), KarpathySplit::Test)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("invalid type: integer `7`, expected a string"),
        "{msg}"
    );
    fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- CIRR

fn cirr_val() -> ComposedDataset {
    let dir = fixtures().join("cirr");
    cirr::load(&dir, &dir.join("img_raw"), CirrSplit::Val).unwrap()
}

#[test]
fn cirr_val_split() {
    let ds = cirr_val();
    assert_eq!((ds.benchmark.as_str(), ds.split.as_str()), ("CIRR", "val"));
    assert_eq!(ds.gallery.len(), 13);
    let img_raw = fixtures().join("cirr/img_raw");
    let g = ds.gallery.iter().find(|g| g.id == "dev-7-0-img0").unwrap();
    assert_eq!(g.path, img_raw.join("dev/dev-7-0-img0.png"));

    assert_eq!(ds.queries.len(), 3);
    let q = &ds.queries[1];
    assert_eq!(q.id, "101");
    assert_eq!(q.reference_id, "dev-2-0-img0");
    assert_eq!(q.reference_path, img_raw.join("dev/dev-2-0-img0.png"));
    assert_eq!(q.texts, ["make the background a beach"]);
    assert_eq!(q.target_id.as_deref(), Some("dev-3-2-img1"));
    assert_eq!(q.ground_truth, ["dev-3-2-img1"]);
    assert_eq!(q.image_set.as_ref().unwrap().len(), 6);
    assert!(ds.has_ground_truth());

    let truth = ds.cirr_truth().unwrap();
    // 100: reference first, target next -> rank 1 without the reference.
    // 101: target after two other members of its set and one outsider.
    // 102: target absent.
    let runs = vec![
        Ranked::new("100", ["dev-1-0-img0", "dev-2-0-img0"]),
        Ranked::new(
            "101",
            [
                "dev-1-1-img1",
                "dev-7-0-img0",
                "dev-3-0-img0",
                "dev-3-2-img1",
            ],
        ),
        Ranked::new("102", ["dev-5-0-img0", "dev-4-1-img1"]),
    ];
    assert!(close(
        cirr_recall_at_k(&runs, &truth, 1).unwrap(),
        1.0 / 3.0
    ));
    assert!(close(
        cirr_recall_at_k(&runs, &truth, 4).unwrap(),
        2.0 / 3.0
    ));
    assert!(close(
        cirr_recall_subset_at_k(&runs, &truth, 2).unwrap(),
        1.0 / 3.0
    ));
    assert!(close(
        cirr_recall_subset_at_k(&runs, &truth, 3).unwrap(),
        2.0 / 3.0
    ));
}

#[test]
fn cirr_test1_split_has_no_targets() {
    let dir = fixtures().join("cirr");
    let ds = cirr::load(&dir, &dir.join("img_raw"), CirrSplit::Test1).unwrap();
    assert_eq!(ds.queries.len(), 2);
    assert!(
        ds.queries
            .iter()
            .all(|q| q.target_id.is_none() && q.ground_truth.is_empty())
    );
    assert!(!ds.has_ground_truth());
    assert!(ds.ground_truth().is_none());
    assert!(ds.target_truth().is_none());
    assert!(ds.cirr_truth().is_none());
    assert_eq!(
        ds.queries[1].image_set.as_ref().unwrap()[0],
        "test1-1-0-img0"
    );
}

#[test]
fn cirr_wrong_image_folder_explains_the_layout() {
    let dir = fixtures().join("cirr");
    // The dataset folder instead of img_raw/.
    let err = cirr::load(&dir, &dir, CirrSplit::Val).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LoadError::MissingImages {
                missing: 13,
                total: 13,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("train/, dev/ and test1/"), "{msg}");
    // No train split files in the fixture: the error names the file.
    let msg = cirr::load(&dir, &dir.join("img_raw"), CirrSplit::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("split.rc2.train.json"), "{msg}");
}

#[test]
fn cirr_broken_files() {
    let dir = scratch_copy("cirr", "cirr-broken");
    let img = dir.join("img_raw");
    let captions = dir.join("captions/cap.rc2.val.json");
    let split = dir.join("image_splits/split.rc2.val.json");
    let original = fs::read_to_string(&captions).unwrap();
    let load = || {
        cirr::load(&dir, &img, CirrSplit::Val)
            .unwrap_err()
            .to_string()
    };

    fs::write(
        &captions,
        original.replacen("\"reference\": ", "\"ref\": ", 1),
    )
    .unwrap();
    let msg = load();
    assert!(msg.contains("cap.rc2.val.json"), "{msg}");
    assert!(msg.contains("missing field `reference`"), "{msg}");

    fs::write(
        &captions,
        original.replacen("\"pairid\": 100", "\"pairid\": \"x\"", 1),
    )
    .unwrap();
    assert!(load().contains("invalid type: string \"x\", expected u64"));

    fs::write(
        &captions,
        original.replacen("\"pairid\": 101", "\"pairid\": 100", 1),
    )
    .unwrap();
    assert!(load().contains("pairid 100 appears twice"));

    fs::write(
        &captions,
        original.replacen("\"target_hard\": \"dev-2-0-img0\", ", "", 1),
    )
    .unwrap();
    assert!(load().contains("pairid 100: missing \"target_hard\""));

    fs::write(
        &captions,
        original.replacen(
            "\"target_hard\": \"dev-2-0-img0\"",
            "\"target_hard\": \"dev-7-0-img0\"",
            1,
        ),
    )
    .unwrap();
    assert!(load().contains("is not among img_set.members"));

    fs::write(
        &captions,
        original.replacen(
            "\"reference\": \"dev-1-0-img0\"",
            "\"reference\": \"dev-99-img0\"",
            1,
        ),
    )
    .unwrap();
    let msg = load();
    assert!(
        msg.contains("pairid 100: reference \"dev-99-img0\" is not listed in"),
        "{msg}"
    );
    fs::write(&captions, &original).unwrap();

    let split_original = fs::read_to_string(&split).unwrap();
    fs::write(
        &split,
        split_original.replacen("./dev/dev-7-0-img0.png", "../../../etc/passwd", 1),
    )
    .unwrap();
    assert!(load().contains("is not a path inside the image folder"));
    fs::write(
        &split,
        split_original.replacen("{", "{\"dev-7-0-img0\": \"./dev/x.png\", ", 1),
    )
    .unwrap();
    let msg = load();
    assert!(msg.contains("key \"dev-7-0-img0\" appears twice"), "{msg}");
    fs::write(&split, &split_original).unwrap();

    fs::remove_file(img.join("dev/dev-6-1-img1.png")).unwrap();
    let msg = load();
    assert!(msg.contains("1 of 13 images are missing"), "{msg}");
    assert!(msg.contains("dev-6-1-img1.png"), "{msg}");
    fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- CIRCO

#[test]
fn circo_val_split() {
    let dir = fixtures().join("circo");
    let ds = circo::load(&dir, &dir.join("COCO2017_unlabeled"), CircoSplit::Val).unwrap();
    let gallery: Vec<&str> = ds.gallery.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(
        gallery,
        ["101", "202", "303", "404", "505", "606", "707", "808"]
    );
    assert_eq!(
        ds.gallery[0].path,
        dir.join("COCO2017_unlabeled/unlabeled2017/000000000101.jpg")
    );
    let q = &ds.queries[0];
    assert_eq!((q.id.as_str(), q.reference_id.as_str()), ("0", "101"));
    assert_eq!(q.texts, ["is sleeping on a red sofa"]);
    assert_eq!(q.shared_concept.as_deref(), Some("a black cat"));
    assert_eq!(q.target_id.as_deref(), Some("202"));
    assert_eq!(q.ground_truth, ["202", "303", "404"]);

    // mAP@5 with every ground truth: query 0 finds 303 at rank 1 and 202 at rank 3
    // (1/1 + 2/3) / min(3, 5); query 1 misses.
    let gt = ds.ground_truth().unwrap();
    let runs = vec![
        Ranked::new("0", ["303", "808", "202"]),
        Ranked::new("1", ["101"]),
    ];
    assert!(close(
        map_at_k(&runs, &gt, 5).unwrap(),
        (1.0 + 2.0 / 3.0) / 3.0 / 2.0
    ));
    // CIRCO's Recall@K counts the target only: 202 is at rank 3.
    let targets = ds.target_truth().unwrap();
    assert_eq!(recall_at_k(&runs, &targets, 1).unwrap(), 0.0);
    assert_eq!(recall_at_k(&runs, &targets, 3).unwrap(), 0.5);
    // Against every ground truth, rank 1 already hits.
    assert_eq!(recall_at_k(&runs, &gt, 1).unwrap(), 0.5);
}

#[test]
fn circo_accepts_unlabeled2017_itself_and_reads_test() {
    let dir = fixtures().join("circo");
    let images = dir.join("COCO2017_unlabeled/unlabeled2017");
    let ds = circo::load(&dir, &images, CircoSplit::Test).unwrap();
    assert_eq!(ds.gallery.len(), 8);
    assert_eq!(
        ds.queries[0].reference_path,
        images.join("000000000707.jpg")
    );
    assert!(!ds.has_ground_truth());
    assert!(ds.ground_truth().is_none());
}

#[test]
fn circo_missing_images_and_broken_files() {
    let dir = scratch_copy("circo", "circo-broken");
    let images = dir.join("COCO2017_unlabeled");
    let unlabeled = images.join("unlabeled2017");
    // Files that are not 12-digit .jpg names are not gallery images.
    fs::write(unlabeled.join(".DS_Store"), b"").unwrap();
    fs::write(unlabeled.join("101.jpg"), b"").unwrap();
    let ds = circo::load(&dir, &images, CircoSplit::Val).unwrap();
    assert_eq!(ds.gallery.len(), 8);

    fs::remove_file(unlabeled.join("000000000404.jpg")).unwrap();
    let err = circo::load(&dir, &images, CircoSplit::Val).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LoadError::MissingImages {
                missing: 1,
                total: 6,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("000000000404.jpg"), "{msg}");
    assert!(msg.contains("12-digit zero-padded id"), "{msg}");

    let val = dir.join("annotations/val.json");
    let original = fs::read_to_string(&val).unwrap();
    fs::write(
        &val,
        original.replacen("\"target_img_id\": 202", "\"target_img_id\": 505", 1),
    )
    .unwrap();
    let msg = circo::load(&dir, &images, CircoSplit::Val)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("val.json"), "{msg}");
    assert!(
        msg.contains("target_img_id 505 is not among gt_img_ids"),
        "{msg}"
    );

    fs::write(
        &val,
        original.replacen(
            "\"reference_img_id\": 101",
            "\"reference_img_id\": \"101\"",
            1,
        ),
    )
    .unwrap();
    let msg = circo::load(&dir, &images, CircoSplit::Val)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("invalid type: string \"101\", expected u64"),
        "{msg}"
    );
    assert!(msg.contains("integer ids"), "{msg}");

    fs::write(
        &val,
        original.replacen("\"gt_img_ids\": [\n            606\n        ],", "", 1),
    )
    .unwrap();
    let msg = circo::load(&dir, &images, CircoSplit::Val)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("query 1: missing \"gt_img_ids\""), "{msg}");
    fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- FashionIQ

fn fiq(category: FashionIqCategory, split: FashionIqSplit) -> ComposedDataset {
    let dir = fixtures().join("fashioniq");
    fashioniq::load(&dir, &dir.join("images"), category, split).unwrap()
}

#[test]
fn fashioniq_val_split() {
    let ds = fiq(FashionIqCategory::Dress, FashionIqSplit::Val);
    assert_eq!(ds.benchmark, "FashionIQ dress");
    assert_eq!(ds.gallery.len(), 4);
    assert_eq!(
        ds.gallery[1].path,
        fixtures().join("fashioniq/images/B000DRS002.png")
    );
    let q = &ds.queries[1];
    assert_eq!(q.id, "dress-1");
    assert_eq!(q.reference_id, "B000DRS003");
    assert_eq!(q.texts, ["is shorter", " floral print"]);
    assert_eq!(q.target_id.as_deref(), Some("B000DRS004"));

    // The dataset folder works as the image folder too.
    let dir = fixtures().join("fashioniq");
    let same = fashioniq::load(&dir, &dir, FashionIqCategory::Dress, FashionIqSplit::Val).unwrap();
    assert_eq!(same, ds);
}

#[test]
fn fashioniq_scores_over_loaded_categories() {
    let dress = fiq(FashionIqCategory::Dress, FashionIqSplit::Val);
    let shirt = fiq(FashionIqCategory::Shirt, FashionIqSplit::Val);
    let dress_gt = dress.ground_truth().unwrap();
    let shirt_gt = shirt.ground_truth().unwrap();
    // dress-0 hits at rank 1, dress-1 misses; shirt-0 hits at rank 2.
    let dress_runs = vec![
        Ranked::new("dress-0", ["B000DRS002", "B000DRS001"]),
        Ranked::new("dress-1", ["B000DRS001"]),
    ];
    let shirt_runs = vec![Ranked::new("shirt-0", ["B000SHT002", "B000SHT003"])];
    let s = fashioniq_scores(&[
        FashionIqCategoryRuns {
            category: "dress",
            runs: &dress_runs,
            truth: &dress_gt,
        },
        FashionIqCategoryRuns {
            category: "shirt",
            runs: &shirt_runs,
            truth: &shirt_gt,
        },
    ])
    .unwrap();
    assert!(close(s.mean_recall_at_10, 0.75));
    assert!(close(s.mean_recall_at_50, 0.75));
    assert!(close(s.average, 0.75));
}

#[test]
fn fashioniq_test_split_has_no_targets() {
    let ds = fiq(FashionIqCategory::Dress, FashionIqSplit::Test);
    assert_eq!(ds.queries.len(), 1);
    assert!(ds.ground_truth().is_none());
}

#[test]
fn fashioniq_broken_files() {
    let dir = scratch_copy("fashioniq", "fashioniq-broken");
    let images = dir.join("images");
    let captions = dir.join("captions/cap.dress.val.json");
    let original = fs::read_to_string(&captions).unwrap();
    let load = || {
        fashioniq::load(&dir, &images, FashionIqCategory::Dress, FashionIqSplit::Val)
            .unwrap_err()
            .to_string()
    };

    fs::write(
        &captions,
        original.replacen("\"B000DRS004\"", "\"B000SHT001\"", 1),
    )
    .unwrap();
    let msg = load();
    assert!(
        msg.contains("entry 1: target \"B000SHT001\" is not listed in"),
        "{msg}"
    );

    fs::write(
        &captions,
        original.replacen("\"B000DRS001\"", "\"../B000DRS001\"", 1),
    )
    .unwrap();
    assert!(load().contains("entry 0: candidate \"../B000DRS001\" is not a plain file name"));

    fs::write(
        &captions,
        original.replacen("\"target\": \"B000DRS002\",", "", 1),
    )
    .unwrap();
    assert!(load().contains("entry 0: missing \"target\""));

    fs::write(&captions, "{\"target\": 1}").unwrap();
    let msg = load();
    assert!(msg.contains("cap.dress.val.json"), "{msg}");
    assert!(msg.contains("expected a sequence"), "{msg}");
    fs::write(&captions, &original).unwrap();

    fs::remove_file(images.join("B000DRS003.png")).unwrap();
    let msg = load();
    assert!(msg.contains("1 of 4 images are missing"), "{msg}");
    assert!(msg.contains("<name>.png"), "{msg}");
    fs::remove_dir_all(dir).unwrap();
}
