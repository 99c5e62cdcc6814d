//! `project` and `embed-texts-with-slots` on designed models: the projector's numbers are known
//! exactly, and the slot text encoder puts words on known attribute axes.

use quarry_host::capacity::Caller;
use quarry_tests::{add_test_model, host};

/// The projector's weights, as tests/models/make_models.py writes them.
const W: [[f32; 3]; 4] = [[0.5, -1.0, 0.0], [0.25, 0.0, 2.0], [-0.5, 1.5, 0.75], [1.0, 0.5, -0.25]];
const B: [f32; 3] = [0.1, -0.2, 0.3];

#[test]
fn project_runs_the_vector_model() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "projector");
    let inputs = vec![vec![1.0, 2.0, 3.0, 4.0], vec![0.0, -1.0, 0.5, 0.0]];
    let got = host.models().project("phi", &inputs, &Caller::host()).unwrap();
    for (x, y) in inputs.iter().zip(&got) {
        let want: Vec<f32> = (0..3).map(|j| (0..4).map(|i| x[i] * W[i][j]).sum::<f32>() + B[j]).collect();
        assert_eq!(y.len(), 3);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }
    let err = host.models().project("phi", &[vec![1.0; 4], vec![1.0; 3]], &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("vector 1 has 3 values but vector 0 has 4"), "{err}");
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

#[test]
fn a_slot_vector_stands_in_for_the_placeholder_word() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "slot-text");
    let models = host.models();
    // The token embedding of "circle" (axis 3), as a pseudo-word for the placeholder.
    let circle = vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let composed = models.embed_texts_with_slots("slot-text", &[("a photo of $ that is blue".to_string(), vec![circle])], &Caller::host()).unwrap().remove(0);
    let captions = ["a photo of a blue circle", "a photo of a red circle", "a photo of a blue square", "a photo of a green triangle"];
    let embedded = models.embed_texts("slot-text", &captions.map(String::from), &Caller::host()).unwrap();
    let scores: Vec<f32> = embedded.iter().map(|e| cosine(&composed, e)).collect();
    let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(captions[best], "a photo of a blue circle", "{scores:?}");
    assert!(scores[best] > 0.99, "{scores:?}");
    // Without the slot, the placeholder contributes nothing: only "blue" remains.
    let plain = models.embed_texts("slot-text", &["a photo of $ that is blue".to_string()], &Caller::host()).unwrap().remove(0);
    assert!(cosine(&plain, &composed) < 0.9);

    let err = models.embed_texts_with_slots("slot-text", &[("no placeholder here".to_string(), vec![vec![0.0; 6]])], &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("0 `$` placeholder(s) but 1 slot vector(s)"), "{err}");
    let err = models.embed_texts_with_slots("slot-text", &[("a $".to_string(), vec![vec![0.0; 5]])], &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("has 5 values, the model takes 6"), "{err}");
}

#[test]
fn an_inputs_embeds_export_takes_slots_through_its_embedding_layer() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "slot-text");
    add_test_model(&host, "slot-text-embeds");
    let models = host.models();
    // The same encoder in two export layouts gives the same embeddings, with and without slots.
    let circle = vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let templates = vec![("a photo of $ that is blue".to_string(), vec![circle.clone()]), ("$ and $".to_string(), vec![circle.clone(), circle])];
    let captions = ["a photo of a blue circle", "a red square"].map(String::from);
    for (a, b) in [
        (models.embed_texts_with_slots("slot-text", &templates, &Caller::host()).unwrap(), models.embed_texts_with_slots("slot-text-embeds", &templates, &Caller::host()).unwrap()),
        (models.embed_texts("slot-text", &captions, &Caller::host()).unwrap(), models.embed_texts("slot-text-embeds", &captions, &Caller::host()).unwrap()),
    ] {
        for (x, y) in a.iter().zip(&b) {
            assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-6), "{x:?} vs {y:?}");
        }
    }
    let composed = &models.embed_texts_with_slots("slot-text-embeds", &templates[..1], &Caller::host()).unwrap()[0];
    assert!(cosine(composed, &models.embed_texts("slot-text-embeds", &captions[..1], &Caller::host()).unwrap()[0]) > 0.99);
}
