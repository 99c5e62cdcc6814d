//! `lincir` on designed models: a reference image plus a modification text finds the image that
//! keeps the reference's shape and takes the text's colour.

use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{BLUE, RED, add_test_model, host, picture, plugin, route};

#[test]
fn this_but_blue_keeps_the_shape_and_changes_the_colour() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    for model in ["slot-text", "color-image", "lincir-phi"] {
        add_test_model(&host, model);
    }
    host.add_plugin(&plugin("quarry-plugin-lincir")).unwrap();
    let config = serde_json::json!({"text-model": "slot-text", "image-model": "color-image", "projector": "lincir-phi"});
    host.set_route("gallery", route("lincir@0.2.0", &["slot-text", "color-image", "lincir-phi"], config)).unwrap();
    let png = |colour, circle| picture(colour, circle, image::ImageFormat::Png);
    let gallery = [("red-circle", RED, true), ("red-square", RED, false), ("blue-circle", BLUE, true), ("blue-square", BLUE, false)];
    let items = gallery.iter().map(|(id, colour, circle)| NewItem { image: Some(png(*colour, *circle)), ..NewItem::text(id, id) }).collect();
    host.ingest("gallery", items, |_| {}).unwrap();

    let ranked = |request: SearchRequest| host.search("gallery", &request).unwrap().hits.into_iter().map(|h| h.id).collect::<Vec<_>>();
    let composed = |reference: Vec<u8>, text: &str| SearchRequest { image: Some(reference), ..SearchRequest::text(text, 4) };
    assert_eq!(ranked(composed(png(RED, true), "is blue"))[0], "blue-circle");
    assert_eq!(ranked(composed(png(RED, false), "is blue"))[0], "blue-square");
    assert_eq!(ranked(composed(png(BLUE, true), "is red"))[0], "red-circle");
    assert_eq!(ranked(SearchRequest { image: Some(png(RED, true)), k: 4, ..Default::default() })[0], "red-circle", "the image alone finds itself");
    // A composed query never returns its reference image: matched by its bytes, or named.
    let all = ranked(composed(png(RED, true), "is blue"));
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(!all.contains(&"red-circle".to_string()), "{all:?}");
    let named = SearchRequest { params: serde_json::json!({"reference": "blue-square"}), ..composed(png(RED, false), "is blue") };
    assert!(!ranked(named).contains(&"blue-square".to_string()), "the named reference is left out too");
    // Two captions (FashionIQ) compose both ways; the query is their mean.
    let two = SearchRequest { params: serde_json::json!({"captions": ["is blue.", "is a square"]}), ..composed(png(RED, true), "") };
    assert_eq!(ranked(two)[0], "blue-square");
    assert_eq!(ranked(SearchRequest::text("a blue square", 4))[0], "blue-square");

    let bad = serde_json::json!({"text-model": "slot-text", "image-model": "color-image", "projector": "lincir-phi", "template": "no placeholder"});
    host.set_route("gallery", route("lincir@0.2.0", &["slot-text", "color-image", "lincir-phi"], bad)).unwrap();
    let err = host.search("gallery", &composed(png(RED, true), "is blue")).unwrap_err().to_string();
    assert!(err.contains("must contain `$` and `{text}`"), "{err}");
}
