//! Decoder generation sessions on the designed captioner, and generative retrieval through a
//! plugin: beam search constrained by the code trie decodes the right identifiers.

use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{add_test_model, host, plugin, route};
use serde_json::json;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn stepwise_log_probabilities_equal_one_full_pass() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "captioner");
    let models = host.models();
    let mut generation = models.start_generation("captioner", "a photo of a red circle").unwrap();
    let step0 = generation.next_logprobs(&[vec![]]).unwrap().remove(0);
    let step1 = generation.next_logprobs(&[vec![2]]).unwrap().remove(0);
    let step2 = generation.next_logprobs(&[vec![2, 5]]).unwrap().remove(0);
    // codes: 0 <bos>, 1 <eos>, 2 red, 3 blue, 4 green, 5 circle, 6 square, 7 triangle
    assert_eq!((argmax(&step0), argmax(&step1), argmax(&step2)), (2, 5, 1));
    let full = generation.full_logprobs(&[2, 5]).unwrap();
    for (stepwise, full) in [step0, step1, step2].iter().zip(&full) {
        let diff = stepwise.iter().zip(full).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        let total: f32 = stepwise.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "log-probabilities sum to {total}");
    }
    // Several prefixes of different lengths in one step.
    let batch = generation.next_logprobs(&[vec![], vec![3], vec![2, 5]]).unwrap();
    assert_eq!(batch.iter().map(|r| argmax(r)).collect::<Vec<_>>(), [2, 5, 1]);
    generation.reorder(&[2, 0, 0]).unwrap();
    assert!(generation.reorder(&[3]).unwrap_err().to_string().contains("beam 3 does not exist"));
    assert!(generation.next_logprobs(&[vec![99]]).unwrap_err().to_string().contains("outside the decoder's vocabulary"));
}

#[test]
fn dropping_a_session_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "captioner");
    let a = host.models().start_generation("captioner", "a blue square").unwrap();
    let b = host.models().start_generation("captioner", "a green triangle").unwrap();
    assert_eq!(host.models().live_generations("captioner"), 2);
    drop(a);
    assert_eq!(host.models().live_generations("captioner"), 1);
    drop(b);
    assert_eq!(host.models().live_generations("captioner"), 0);
}

#[test]
fn constrained_generation_through_a_plugin_finds_the_right_items() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "captioner");
    host.add_plugin(&plugin("quarry-test-fields")).unwrap();
    host.set_route("c", route("fields@0.1.0", &["captioner"], json!({}))).unwrap();
    let items = [("red-circle", [2, 5]), ("red-circle-2", [2, 5]), ("blue-square", [3, 6]), ("green-triangle", [4, 7]), ("red-square", [2, 6])];
    host.ingest("c", items.iter().map(|(id, codes)| NewItem { metadata: json!({"codes": codes}), ..NewItem::text(id, id) }).collect(), |_| {}).unwrap();
    let generate = |prompt: &str| {
        let request = SearchRequest { params: json!({"op": "generate", "model": "captioner", "steps": 2}), ..SearchRequest::text(prompt, 10) };
        host.search("c", &request).unwrap().hits.into_iter().map(|h| h.id).collect::<Vec<_>>()
    };
    assert_eq!(&generate("a photo of a red circle")[..2], ["red-circle", "red-circle-2"], "both items sharing the decoded codes");
    assert_eq!(generate("a green triangle")[0], "green-triangle");
    // No item is a blue circle: the trie steers decoding to what exists, and colour (weighted
    // more by the captioner) wins: the blue square.
    assert_eq!(generate("a blue circle")[0], "blue-square");
    assert_eq!(host.models().live_generations("captioner"), 0, "the plugin's sessions ended with its calls");
}
