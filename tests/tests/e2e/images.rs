//! Images end to end on designed models: folder ingest of PNG and JPEG files, text-to-image and
//! image-to-image search through the dense plugin, and per-patch image tokens.

use quarry_host::capacity::Caller;
use quarry_host::{SearchRequest, sources};
use quarry_tests::{BLUE, GREEN, RED, add_test_model, host, picture, plugin, route};

#[test]
fn text_and_images_meet_in_one_space() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("pictures");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("red-square.png"), picture(RED, false, image::ImageFormat::Png)).unwrap();
    std::fs::write(folder.join("green-square.jpg"), picture(GREEN, false, image::ImageFormat::Jpeg)).unwrap();
    std::fs::write(folder.join("blue-square.png"), picture(BLUE, false, image::ImageFormat::Png)).unwrap();

    let host = host(&dir.path().join("data"));
    add_test_model(&host, "slot-text");
    add_test_model(&host, "color-image");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    let config = serde_json::json!({"text-model": "slot-text", "image-model": "color-image"});
    host.set_route("pictures", route("dense@0.3.0", &["slot-text", "color-image"], config)).unwrap();
    let read = sources::read(&folder).unwrap();
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(host.ingest("pictures", read.items, |_| {}).unwrap().ingested, 3);

    for (query, expected) in [("something blue", "blue-square"), ("a red thing", "red-square"), ("green", "green-square")] {
        let hits = host.search("pictures", &SearchRequest::text(query, 3)).unwrap().hits;
        assert_eq!(hits[0].id, expected, "{query}: {hits:?}");
    }
    let by_image = SearchRequest { image: Some(picture(BLUE, true, image::ImageFormat::Png)), k: 1, ..Default::default() };
    assert_eq!(host.search("pictures", &by_image).unwrap().hits[0].id, "blue-square");
}

#[test]
fn image_tokens_are_normalised_patch_features() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "color-image");
    let sets = host.models().image_tokens("color-image", &[picture(RED, true, image::ImageFormat::Png)], &Caller::host()).unwrap();
    let (dim, data) = &sets[0];
    assert_eq!((*dim, data.len() / dim), (3, 16), "4x4 patches of RGB means");
    for patch in data.chunks_exact(*dim) {
        assert!((patch.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-4);
    }
    // The centre patches are red, the corners (nearly) white.
    let centre = &data[5 * 3..6 * 3];
    assert!(centre[0] > 0.9 && centre[1] < 0.2, "{centre:?}");
    let corner = &data[..3];
    assert!((corner[0] - corner[2]).abs() < 0.05, "{corner:?}");
    let err = host.models().embed_images("color-image", &[b"not an image".to_vec()], &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("image 0") && err.contains("not a recognised image format"), "{err}");
}
