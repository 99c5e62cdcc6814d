//! Decoder generation sessions on the designed captioner, and generative retrieval through a
//! plugin: beam search constrained by the code trie decodes the right identifiers.

use quarry_host::capacity::Caller;
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
    let mut generation = models.start_generation("captioner", "a photo of a red circle", &Caller::host()).unwrap();
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
    let a = host.models().start_generation("captioner", "a blue square", &Caller::host()).unwrap();
    let b = host.models().start_generation("captioner", "a green triangle", &Caller::host()).unwrap();
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

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The last row of one full pass over `prefix`: what a cached step must reproduce.
fn full_last(generation: &mut quarry_host::models::decoder::Generation, prefix: &[u32]) -> Vec<f32> {
    generation.full_logprobs(prefix).unwrap().pop().unwrap()
}

#[test]
fn a_key_value_cache_gives_the_full_pass_log_probabilities_step_by_step() {
    cached_steps_equal_full_passes("tiny-lm");
}

#[test]
fn a_split_export_steps_with_its_past_graph_and_carries_cross_entries() {
    cached_steps_equal_full_passes("tiny-lm-split");
}

#[test]
fn beams_reordered_in_the_cache_extend_the_right_prefixes() {
    beams_follow_their_cache_rows("tiny-lm");
}

#[test]
fn beams_reordered_in_a_split_export_cache_extend_the_right_prefixes() {
    beams_follow_their_cache_rows("tiny-lm-split");
}

fn cached_steps_equal_full_passes(model: &str) {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, model);
    let mut generation = host.models().start_generation(model, "the prompt comes first", &Caller::host()).unwrap();
    let mut stepwise = vec![generation.next_logprobs(&[vec![]]).unwrap().remove(0)];
    let prefix = [2000u32, 2017, 3899, 42];
    for len in 1..=prefix.len() {
        stepwise.push(generation.next_logprobs(&[prefix[..len].to_vec()]).unwrap().remove(0));
    }
    let stats = generation.stats();
    assert_eq!((stats.full_runs, stats.cached_runs, stats.regathers), (1, 4, 0), "one full pass, then only new tokens");
    let full = generation.full_logprobs(&prefix).unwrap();
    assert_eq!(full.len(), stepwise.len());
    for (t, (a, b)) in stepwise.iter().zip(&full).enumerate() {
        assert!(max_diff(a, b) < 1e-4, "step {t}: cached and full passes differ by {}", max_diff(a, b));
    }
    // The prompt matters: another prompt gives other log-probabilities.
    let mut other = host.models().start_generation(model, "a different prompt", &Caller::host()).unwrap();
    assert!(max_diff(&other.next_logprobs(&[vec![]]).unwrap()[0], &stepwise[0]) > 1e-2);
}

fn beams_follow_their_cache_rows(model: &str) {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, model);
    let mut g = host.models().start_generation(model, "beam search", &Caller::host()).unwrap();
    g.next_logprobs(&[vec![]]).unwrap();
    // Three beams grow out of the one cached row (gathered three times).
    let beams = [vec![5u32], vec![7], vec![9]];
    let scored = g.next_logprobs(&beams).unwrap();
    for (beam, row) in beams.iter().zip(&scored) {
        assert!(max_diff(row, &full_last(&mut g, beam)) < 1e-4);
    }
    // Keep beam 2 and beam 0 twice; the cache rows follow, so extending them runs in place.
    g.reorder(&[2, 0, 0]).unwrap();
    let before = g.stats();
    let next = [vec![9u32, 11], vec![5, 12], vec![5, 13]];
    let scored = g.next_logprobs(&next).unwrap();
    let after = g.stats();
    assert_eq!((after.cached_runs - before.cached_runs, after.regathers - before.regathers, after.full_runs - before.full_runs), (1, 0, 0));
    for (prefix, row) in next.iter().zip(&scored) {
        assert!(max_diff(row, &full_last(&mut g, prefix)) < 1e-4, "{prefix:?}");
    }
    // Prefixes the cache cannot extend (mixed lengths, unknown parents) still get the right answer.
    let mixed = [vec![9u32, 11, 14], vec![3], vec![4, 4]];
    let scored = g.next_logprobs(&mixed).unwrap();
    for (prefix, row) in mixed.iter().zip(&scored) {
        assert!(max_diff(row, &full_last(&mut g, prefix)) < 1e-4, "{prefix:?}");
    }
    // ...and leave a cache in the callers' order: reorder by index, then extend in place.
    g.reorder(&[1]).unwrap();
    let scored = g.next_logprobs(&[vec![3, 8]]).unwrap();
    assert!(max_diff(&scored[0], &full_last(&mut g, &[3, 8])) < 1e-4);
    assert!(g.next_logprobs(&[vec![3, 8, 40000]]).unwrap_err().to_string().contains("outside the decoder's vocabulary of 30522"));
    assert!(g.reorder(&[1]).unwrap_err().to_string().contains("beam 1 does not exist"));
}

#[test]
fn a_cache_the_graph_does_not_have_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let models = quarry_tests::test_models_dir();
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(models.join("tiny-lm.json")).unwrap()).unwrap();
    manifest["files"]["model"] = json!(models.join("tiny-lm.onnx"));
    for (cache, expected) in [
        (json!({"past_prefix": "past_key_values.", "present_prefix": "new."}), "has no matching output `new.0.key`"),
        (json!({"past_prefix": "cache.", "present_prefix": "present."}), "no graph input starts with `cache.`"),
    ] {
        manifest["decoder"]["cache"] = cache;
        let path = dir.path().join("bad.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        host.add_model_file(&path).unwrap();
        let err = host.models().start_generation("tiny-lm", "x", &Caller::host()).err().expect("the cache does not fit the graph").to_string();
        assert!(err.contains(expected) && err.contains("decoder.cache"), "{err}");
    }
}
