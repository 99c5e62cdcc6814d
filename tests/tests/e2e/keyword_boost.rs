//! The `keyword-boost` example against `dense` on a MiniLM paraphrase set: fusing the keyword
//! ranking must not cost the dense ranking its first places (R@1 at least dense's), and exact
//! words must still help.

use quarry_host::{NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::json;

/// Twenty sentences, each with a paraphrase that shares few or no content words with it.
const SET: &[(&str, &str, &str)] = &[
    ("aurora", "Green lights danced across the polar night sky.", "northern lights shimmering above the arctic"),
    ("bakery", "The bakery on the corner sells warm croissants at dawn.", "fresh pastries from the shop down the street early in the morning"),
    ("beekeeping", "Beekeepers wear veils to avoid being stung while collecting honey.", "protective gear for harvesting from hives"),
    ("chess", "The grandmaster sacrificed her queen to win in twelve moves.", "a bold sacrifice that led to a quick checkmate"),
    ("cycling", "He rode his bicycle two hundred kilometres through the mountains.", "a long bike trip over the hills"),
    ("dentist", "Brush twice a day and floss to keep cavities away.", "dental hygiene habits that prevent tooth decay"),
    ("earthquake", "The tremor shook buildings and cracked roads across the city.", "a seismic event damaged the town's streets"),
    ("election", "Voters queued for hours to cast their ballots in the national poll.", "long lines at polling stations during the vote"),
    ("glacier", "The ice sheet has retreated several kilometres in a decade.", "melting frozen rivers shrinking over ten years"),
    ("jazz", "The saxophonist improvised a solo late into the night at the club.", "a musician playing spontaneous tunes at a late show"),
    ("library", "Borrowed books must be returned within three weeks.", "the loan period for lending novels"),
    ("marathon", "Thousands of runners crossed the finish line after 42 kilometres.", "a long-distance race through the streets"),
    ("origami", "She folded a sheet of paper into a delicate crane.", "the Japanese craft of making shapes from folded paper"),
    ("passport", "Renew your passport at least six months before travelling abroad.", "updating travel documents ahead of an international trip"),
    ("rainforest", "Dense tropical jungle shelters thousands of species.", "biodiversity in humid equatorial forests"),
    ("recipe", "Simmer the tomatoes with garlic and basil for twenty minutes.", "how to cook a simple pasta sauce"),
    ("satellite", "The orbiting probe beamed pictures of storms back to Earth.", "weather images sent from space"),
    ("telescope", "Astronomers pointed the lens at a distant galaxy.", "stargazing equipment used to observe far-away stars"),
    ("vaccine", "The injection trains the immune system to fight the virus.", "how immunisation protects against infection"),
    ("volcano", "Lava poured down the slopes after the eruption.", "molten rock flowing from an erupting mountain"),
];

fn recall_at_1(host: &Quarry, collection: &str) -> (usize, Vec<String>) {
    let mut correct = 0;
    let mut misses = Vec::new();
    for (id, _, query) in SET {
        let hits = host.search(collection, &SearchRequest::text(query, 5)).unwrap().hits;
        if hits.first().map(|h| h.id.as_str()) == Some(*id) {
            correct += 1;
        } else {
            misses.push(format!("{query:?} -> {:?} (wanted {id})", hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>()));
        }
    }
    (correct, misses)
}

#[test]
fn keyword_boost_keeps_dense_recall_at_1_on_paraphrases() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.add_plugin(&plugin("keyword-boost")).unwrap();
    let items: Vec<NewItem> = SET.iter().map(|(id, text, _)| NewItem::text(id, text)).collect();
    let config = json!({"text-model": "minilm-l6"});
    host.set_route("dense", route("dense@0.3.0", &["minilm-l6"], config.clone())).unwrap();
    host.ingest("dense", items.clone(), |_| {}).unwrap();
    host.set_route("boost", route("keyword-boost@0.2.0", &["minilm-l6"], config)).unwrap();
    host.ingest("boost", items, |_| {}).unwrap();

    let (dense, dense_misses) = recall_at_1(&host, "dense");
    let (boost, boost_misses) = recall_at_1(&host, "boost");
    println!("R@1 on {} paraphrases: dense {dense}, keyword-boost {boost}", SET.len());
    println!("dense misses: {dense_misses:#?}\nkeyword-boost misses: {boost_misses:#?}");
    assert!(dense >= SET.len() * 3 / 4, "the set is too hard for MiniLM to say anything: dense R@1 {dense}/{}", SET.len());
    assert!(boost >= dense, "keyword-boost R@1 {boost} < dense {dense}: {boost_misses:#?}");

    // An exact word still counts: a query naming one sentence's rare word finds it first.
    let hits = host.search("boost", &SearchRequest::text("saxophonist", 3)).unwrap().hits;
    assert_eq!(hits[0].id, "jazz", "{hits:?}");
    // Scores strictly decrease, so the host's id order for equal scores never decides.
    let hits = host.search("boost", &SearchRequest::text("something about the weather", 20)).unwrap().hits;
    assert!(hits.windows(2).all(|w| w[0].score > w[1].score), "{hits:?}");
}
