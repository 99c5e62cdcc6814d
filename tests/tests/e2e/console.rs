//! The web console (`/console`) in a real browser: `quarry serve` on loopback, headless Chromium
//! driven over WebDriver by chromedriver (both from Debian's packages: `bash scripts/setup.sh`).
//! It signs in (a wrong key shows the API's message), lists collections and plugins, searches by
//! keyboard and with an uploaded image, shows thumbnails and untrusted text as text, starts an
//! experiment, watches its live charts, promotes an arm and rolls back, and fits a phone's width.
//! Screenshots land in `target/test-artifacts/console/`.

use base64::Engine as _;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use quarry_tests::server::{ADMIN_KEY, Server, call};
use quarry_tests::{plugin, root};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", value.to_string().into_bytes()))
}

fn artifacts() -> PathBuf {
    let dir = root().join("target/test-artifacts/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free loopback port, in its own process group under `timeout`, so that it
/// and the browsers it starts end with the test (dropped) or within 10 minutes (a killed test).
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(name: &str) -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = artifacts().join(format!("chromedriver-{name}.log"));
        let child = Command::new("timeout")
            .args(["--kill-after=10", "600", "chromedriver", &format!("--port={port}"), "--allowed-ips=127.0.0.1"])
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("`timeout` (coreutils) runs");
        let mut driver = ChromeDriver { child, url: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        loop {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!("chromedriver exited ({status}); install Chromium and its driver: `bash scripts/setup.sh` (Debian `chromium`, `chromium-driver`)");
            }
            let agent = quarry_tests::server::agent();
            if let Ok(mut response) = agent.get(format!("{}/status", driver.url)).call()
                && response.body_mut().read_json::<Value>().is_ok_and(|v| v["value"]["ready"] == true)
            {
                return driver;
            }
            assert!(started.elapsed() < WAIT, "chromedriver did not become ready on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: timeout, chromedriver and any browser it left.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
    }
    panic!("no Chromium found; `bash scripts/setup.sh` installs Debian's `chromium`")
}

/// A headless Chromium session: a desktop window, or a phone's screen (375 px wide).
async fn browser(driver: &ChromeDriver, profile: &std::path::Path, phone: bool) -> Client {
    let mut options = json!({
        "binary": chromium(),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-extensions", "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())],
    });
    if phone {
        options["mobileEmulation"] = json!({"deviceMetrics": {"width": 375, "height": 812, "pixelRatio": 2.0, "touch": true}});
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"))
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "the screenshot {name} is not a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Wait until `script` (the body of a function) returns something truthy; on time out, save a
/// screenshot and fail naming `what`.
async fn wait_for(client: &Client, what: &str, script: &str) -> Value {
    let started = Instant::now();
    loop {
        let value = js(client, script).await;
        if !(value.is_null() || value == false || value == "" || value == 0) {
            return value;
        }
        if started.elapsed() > WAIT {
            let page = js(client, "return document.body.innerText").await;
            screenshot(client, &format!("failed-{}", what.replace(|c: char| !c.is_ascii_alphanumeric(), "-"))).await;
            panic!("waited {WAIT:?} for {what}; the page says:\n{}", page.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Count what the Content-Security-Policy refuses from now on (it would break the page quietly).
async fn watch_policy(client: &Client) {
    js(client, "window.__refused = []; document.addEventListener('securitypolicyviolation', e => window.__refused.push(e.violatedDirective + ' ' + e.blockedURI)); return true").await;
}

async fn assert_nothing_refused(client: &Client) {
    assert_eq!(js(client, "return window.__refused").await, json!([]), "the page did something its Content-Security-Policy refuses");
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no `{css}`: {e}")).text().await.unwrap()
}

/// Keys typed into whatever has the focus, as a keyboard would.
async fn press(client: &Client, keys: &str) {
    let mut actions = KeyActions::new("keyboard".into());
    for key in keys.chars() {
        actions = actions.then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
    }
    client.perform_actions(actions).await.unwrap();
}

fn tab() -> String {
    char::from(Key::Tab).to_string()
}

fn enter() -> String {
    char::from(Key::Enter).to_string()
}

async fn sign_in(client: &Client, key: &str) {
    let field = client.wait().at_most(WAIT).for_element(Locator::Id("api-key")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(&format!("{key}{}", enter())).await.unwrap();
}

/// The route kind and summary the console shows for `collection`.
async fn shown_route(client: &Client, collection: &str) -> (String, String) {
    let kind = js(client, &format!("const r = document.querySelector('li[data-collection=\"{collection}\"] .route'); return r ? r.dataset.routeKind : null")).await;
    (kind.as_str().unwrap_or_default().to_string(), text(client, &format!("li[data-collection=\"{collection}\"] .route-summary")).await)
}

struct World {
    server: Server,
    key: String,
    red_png: Vec<u8>,
}

const NASTY_ID: &str = "<b>bold</b>";
const NASTY_TEXT: &str = "<img src=x onerror=\"window.__pwned=1\"> a note about markup in item texts";

/// A tenant `acme` with MiniLM, the dense and keyword-boost plugins, and a collection `docs`
/// routed to dense: four sentences, one with a thumbnail, one whose id and text are markup.
fn world(data: &std::path::Path) -> World {
    let server = Server::start(data, None);
    let manifest = root().join("examples/models/minilm-l6.json");
    let (status, out, _) = call("POST", &server.url("/v1/models"), Some(ADMIN_KEY), json_body(&json!({"manifest": manifest})));
    assert_eq!(status, 201, "{out}; run `bash scripts/setup.sh` first");
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "acme", "models": ["minilm-l6"]})));
    assert_eq!(status, 201, "{out}");
    let key = out["api_key"].as_str().unwrap().to_string();
    for name in ["quarry-plugin-dense", "keyword-boost"] {
        let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin(name))));
        assert_eq!(status, 201, "{out}");
    }
    let red_png = quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png);
    let thumbnail = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&red_png));
    let items = json!({"items": [
        {"id": "cat", "text": "a cat sleeps on the warm windowsill"},
        {"id": "rocket", "text": "the rocket launch was delayed by strong winds"},
        {"id": "red", "text": "a red circle drawn on white paper", "metadata": {"thumbnail": thumbnail}},
        {"id": "not-a-picture", "text": "a blue square drawn on white paper", "metadata": {"thumbnail": "data:text/html;base64,PGI+aGk8L2I+"}},
        {"id": NASTY_ID, "text": NASTY_TEXT},
    ]});
    // keyword-boost indexes the same `embedding` (MiniLM) as dense, plus its keyword codes, so
    // either can serve the collection: ingest under it, then route to dense.
    let routes = [
        json!({"strategy": "keyword-boost@0.2.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]}),
        json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]}),
    ];
    for (n, route) in routes.iter().enumerate() {
        let (status, out, _) = call("PUT", &server.url("/v1/collections/docs/route"), Some(&key), json_body(route));
        assert_eq!(status, 200, "{out}");
        if n == 0 {
            let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&key), json_body(&items));
            assert_eq!(status, 200, "{out}");
        }
    }
    World { server, key, red_png }
}

#[test]
fn the_console_is_served_offline_with_its_types_and_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/console.css", "text/css"),
        ("/console/console.js", "text/javascript"),
    ] {
        // No key: the assets are public and hold no data.
        let (status, body, headers) = call("GET", &server.url(path), None, None);
        assert_eq!(status, 200, "{path}: {body}");
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'self'") && policy.contains("img-src 'self' data: blob:"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        // (The SVG namespace is a name, not a place anything is fetched from.)
        let body = body.as_str().unwrap().replace("http://www.w3.org/2000/svg", "");
        // Offline: nothing is fetched from elsewhere.
        assert!(!body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"), "{path} refers to another origin");
        if path.ends_with(".js") {
            // Data reaches the page as text only.
            for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
                assert!(!body.contains(sink), "console.js uses {sink}");
            }
        }
        if path.starts_with("/console") && content_type == "text/html" {
            assert!(!body.contains("<script>") && !body.contains("style="), "{path} has inline script or style, which the policy refuses");
        }
    }
    // Not part of the JSON API: not in its document, and other paths stay JSON 404s.
    let (_, document, _) = call("GET", &server.url("/openapi.json"), None, None);
    assert!(document["paths"].as_object().unwrap().keys().all(|p| !p.starts_with("/console")));
    let (status, out, _) = call("GET", &server.url("/console/nope.js"), None, None);
    assert_eq!(status, 404, "{out}");
    assert_eq!(out["error"]["code"], "not_found");
}

/// A server with [`world`], chromedriver, and a runtime to drive them.
fn with_browser(name: &str, test: impl AsyncFnOnce(&Driven)) {
    let dir = tempfile::tempdir().unwrap();
    let World { server, key, red_png } = world(&dir.path().join("data"));
    let upload = dir.path().join("query.png");
    std::fs::write(&upload, &red_png).unwrap();
    let driver = ChromeDriver::start(name);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(test(&Driven { server, key, upload, driver, profiles: dir.path().to_path_buf() }));
}

struct Driven {
    server: Server,
    key: String,
    upload: PathBuf,
    driver: ChromeDriver,
    profiles: PathBuf,
}

impl Driven {
    async fn browser(&self, name: &str, phone: bool) -> Client {
        browser(&self.driver, &self.profiles.join(format!("profile-{name}")), phone).await
    }
}

#[test]
fn the_console_signs_in_searches_by_keyboard_and_image_and_fits_a_phone() {
    with_browser("search", async |t| {
        let client = t.browser("desktop", false).await;
        desktop(&client, &t.server, &t.key, &t.upload).await;
        client.close().await.unwrap();
        let phone = t.browser("phone", true).await;
        phone_width(&phone, &t.server, &t.key, false).await;
        phone.close().await.unwrap();
    });
}

#[test]
fn the_console_starts_an_experiment_charts_it_promotes_and_rolls_back() {
    with_browser("experiment", async |t| {
        let client = t.browser("desktop", false).await;
        client.goto(&t.server.url("/console")).await.unwrap();
        watch_policy(&client).await;
        sign_in(&client, &t.key).await;
        wait_for(&client, "the docs collection", "return document.querySelector('li[data-collection=\"docs\"]')").await;
        experiment(&client, &t.server, &t.key).await;
        client.close().await.unwrap();
        let phone = t.browser("phone", true).await;
        phone_width(&phone, &t.server, &t.key, true).await;
        phone.close().await.unwrap();
    });
}

async fn desktop(client: &Client, server: &Server, key: &str, upload: &std::path::Path) {
    client.goto(&server.url("/console")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "Quarry console");
    watch_policy(client).await;

    // A wrong key: the API's own message, and nothing else shown.
    sign_in(client, "qk_not-a-real-key").await;
    wait_for(client, "the wrong key's error", "return document.getElementById('sign-in-error').textContent.includes('the API key is not valid')").await;
    assert_eq!(js(client, "return document.getElementById('app').hidden").await, true);
    assert_eq!(js(client, "return sessionStorage.length").await, 0);
    screenshot(client, "01-wrong-key").await;

    // The tenant's key: kept in sessionStorage, and the tenant's collections and plugins shown.
    sign_in(client, key).await;
    wait_for(client, "the signed-in tenant", "return document.getElementById('who').textContent.includes('tenant acme')").await;
    assert_eq!(js(client, "return Object.values(sessionStorage)").await, json!([key]));
    wait_for(client, "the docs collection", "return document.querySelector('li[data-collection=\"docs\"]')").await;
    assert_eq!(shown_route(client, "docs").await, ("strategy".to_string(), "dense@0.3.0".to_string()));
    assert!(text(client, "li[data-collection=\"docs\"]").await.contains("5 items"));
    let dense = text(client, "li[data-strategy=\"dense@0.3.0\"]").await;
    assert!(dense.contains("contract quarry:retrieval@0.2.0") && dense.contains("Two-tower dense retrieval"), "{dense}");
    assert!(text(client, "li[data-strategy=\"keyword-boost@0.2.0\"]").await.contains("re-ranked by keyword overlap"));

    // Keyboard only: Tab from the top of the page to the query field, which shows its focus;
    // type, and Enter submits.
    js(client, "document.activeElement.blur(); window.scrollTo(0, 0); return true").await;
    let mut tabs = 0;
    while js(client, "return document.activeElement.id").await != "search-text" {
        tabs += 1;
        assert!(tabs <= 40, "40 Tabs did not reach the query field");
        press(client, &tab()).await;
    }
    let outline = js(client, "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]").await;
    assert!(outline[0] != "none" && outline[1].as_f64().unwrap() >= 2.0, "the focused field shows no focus ring: {outline}");
    press(client, &format!("a kitten napping in the sun{}", enter())).await;
    wait_for(client, "hits for the kitten", "return document.querySelectorAll('#hits li.hit').length").await;
    assert_eq!(js(client, "return document.querySelector('#hits li.hit').dataset.id").await, "cat");
    assert!(text(client, "#search-summary").await.contains("from dense@0.3.0"));
    screenshot(client, "02-search").await;

    // Untrusted ids and texts are shown as text: no element made from them, no script run.
    let field = client.find(Locator::Id("search-text")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(&format!("markup in item texts{}", enter())).await.unwrap();
    wait_for(client, "the markup item", &format!("return [...document.querySelectorAll('#hits li.hit')].some(li => li.dataset.id === {})", json!(NASTY_ID))).await;
    let nasty = js(
        client,
        &format!(
            "const li = [...document.querySelectorAll('#hits li.hit')].find(li => li.dataset.id === {}); \
             return [li.querySelector('.hit-id').textContent, li.querySelector('.text').textContent, li.querySelectorAll('b, img').length, window.__pwned === undefined]",
            json!(NASTY_ID)
        ),
    )
    .await;
    assert_eq!(nasty, json!([NASTY_ID, NASTY_TEXT, 0, true]));

    // An uploaded image travels as base64 beside the text; a hit with a picture shows it, and a
    // `data:` URL that is not an image is not shown.
    js(client, "window.__bodies = []; const f = window.fetch; window.fetch = (u, i) => { window.__bodies.push(i && i.body); return f(u, i); }; return true").await;
    client.find(Locator::Id("search-image")).await.unwrap().send_keys(upload.to_str().unwrap()).await.unwrap();
    wait_for(client, "the query image's preview", "const p = document.getElementById('image-preview'); return !p.hidden && p.complete && p.naturalWidth === 64").await;
    let field = client.find(Locator::Id("search-text")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(&format!("a red circle{}", enter())).await.unwrap();
    wait_for(client, "the red circle's thumbnail", "const img = document.querySelector('#hits li.hit[data-id=\"red\"] img.thumb'); return img && img.complete && img.naturalWidth === 64").await;
    let sent = js(client, "return JSON.parse(window.__bodies.filter(Boolean).pop())").await;
    assert_eq!(sent["text"], "a red circle");
    assert_eq!(sent["image"], base64::engine::general_purpose::STANDARD.encode(std::fs::read(upload).unwrap()), "the image was not sent as base64");
    assert_eq!(js(client, "return document.querySelector('#hits li.hit[data-id=\"red\"]').textContent.includes('a red circle drawn')").await, true);
    assert_eq!(js(client, "const li = document.querySelector('#hits li.hit[data-id=\"not-a-picture\"]'); return li ? li.querySelectorAll('img').length : -1").await, 0);
    screenshot(client, "03-image-search").await;
    client.find(Locator::Id("clear-image")).await.unwrap().click().await.unwrap();
    assert_eq!(js(client, "return document.getElementById('image-preview').hidden").await, true);
    assert_nothing_refused(client).await;

    // Sign out: the key leaves sessionStorage. The admin key signs in too, and sees the API's
    // word that collections are a tenant's.
    client.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
    wait_for(client, "the sign-in form", "return !document.getElementById('sign-in-view').hidden && document.getElementById('app').hidden").await;
    assert_eq!(js(client, "return sessionStorage.length").await, 0);
    assert_eq!(js(client, "return document.querySelectorAll('#hits li, #collections li').length").await, 0);
    sign_in(client, ADMIN_KEY).await;
    wait_for(client, "the admin's view", "return document.getElementById('who').textContent.includes('admin key')").await;
    wait_for(client, "the admin's collections message", "return document.getElementById('collections-error').textContent.includes(\"tenant's API key\")").await;
    client.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
}

async fn experiment(client: &Client, server: &Server, key: &str) {
    // Start: dense against keyword-boost, interleaved, from the form.
    client.find(Locator::Id("experiments-view")).await.unwrap();
    client.find(Locator::Id("experiment-collection")).await.unwrap().select_by_value("docs").await.unwrap();
    client.find(Locator::Id("arm-0-strategy")).await.unwrap().select_by_value("dense@0.3.0").await.unwrap();
    client.find(Locator::Id("arm-1-strategy")).await.unwrap().select_by_value("keyword-boost@0.2.0").await.unwrap();
    assert_eq!(js(client, "return document.getElementById('arm-1-config').value").await, r#"{"text-model":"minilm-l6"}"#, "the arms start from the route's config");
    client.find(Locator::Id("exp-interleave")).await.unwrap().click().await.unwrap();
    client.find(Locator::Css("#start-experiment button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(client, "the experiment route", "const r = document.querySelector('li[data-collection=\"docs\"] .route'); return r && r.dataset.routeKind === 'experiment'").await;
    let (_, summary) = shown_route(client, "docs").await;
    assert!(summary.contains("experiment e1 (interleaved)") && summary.contains("dense@0.3.0") && summary.contains("keyword-boost@0.2.0"), "{summary}");
    let (_, listed, _) = call("GET", &server.url("/v1/collections/docs"), Some(key), None);
    assert_eq!(listed["route"]["experiment"]["name"], "e1", "{listed}");
    wait_for(client, "the arm table", "return document.querySelectorAll('#arm-table tbody tr').length === 2").await;

    // Searches answered by the experiment: interleaved hits carry their team; a click is fed back.
    for query in ["a kitten napping in the sun", "rocket launch delayed", "a red circle", "cats on windowsills"] {
        let field = client.find(Locator::Id("search-text")).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(&format!("{query}{}", enter())).await.unwrap();
        wait_for(client, "an impression", &format!("const s = document.getElementById('search-summary').textContent; return s.includes('impression') && document.getElementById('search-text').value === {}", json!(query))).await;
        wait_for(client, "teams on hits", "return document.querySelectorAll('#hits li.hit .team').length").await;
        client.find(Locator::Css("#hits li.hit button.click")).await.unwrap().click().await.unwrap();
        wait_for(client, "the click recorded", "return document.getElementById('search-status').textContent.includes('recorded')").await;
    }
    screenshot(client, "04-experiment-search").await;

    // Live charts: polled every 2 s, latency lines for both arms, click-through, Δ and its interval.
    wait_for(client, "calls counted per arm", "return [...document.querySelectorAll('#arm-table tbody tr')].every(tr => Number(tr.querySelector('[data-col=calls]').textContent) > 0)").await;
    wait_for(client, "latency lines for both arms", "return new Set([...document.querySelectorAll('#latency-chart polyline')].map(p => p.dataset.arm)).size === 2").await;
    wait_for(client, "click-through bars", "return document.querySelectorAll('#ctr-chart rect').length === 2").await;
    wait_for(client, "the interleaving verdict", "const d = document.getElementById('delta-chart'); return d && d.querySelector('#delta-ci') && d.querySelector('#delta-point') && d.textContent.includes('impressions')").await;
    let impressions = wait_for(client, "4 impressions", "const t = document.querySelector('#delta-chart figcaption').textContent; return t.includes('; 4 impressions') && t").await;
    assert!(impressions.as_str().unwrap().contains("95% CI ["), "{impressions}");
    js(client, "document.getElementById('experiments-view').scrollIntoView(); return true").await;
    screenshot(client, "05-experiment-charts").await;
    screenshot_to_docs(client).await;

    // Promote b: the route becomes keyword-boost, in the console and on the server.
    client.find(Locator::Css("button[data-promote=\"b\"]")).await.unwrap().click().await.unwrap();
    wait_for(client, "the promoted route", "const r = document.querySelector('li[data-collection=\"docs\"] .route'); return r && r.dataset.routeKind === 'strategy'").await;
    assert_eq!(shown_route(client, "docs").await, ("strategy".to_string(), "keyword-boost@0.2.0".to_string()));
    let (_, listed, _) = call("GET", &server.url("/v1/collections/docs"), Some(key), None);
    assert_eq!(listed["route"]["strategy"], "keyword-boost@0.2.0", "{listed}");
    assert!(text(client, "#experiment-status").await.contains("Promoted b on docs"));
    screenshot(client, "06-promoted").await;

    // Roll back: the experiment is the route again.
    client.find(Locator::Id("rollback")).await.unwrap().click().await.unwrap();
    wait_for(client, "the rolled-back route", "const r = document.querySelector('li[data-collection=\"docs\"] .route'); return r && r.dataset.routeKind === 'experiment'").await;
    let (_, listed, _) = call("GET", &server.url("/v1/collections/docs"), Some(key), None);
    assert_eq!(listed["route"]["experiment"]["name"], "e1", "{listed}");
    assert_nothing_refused(client).await;
}

/// The README's screenshot, when asked for (`QUARRY_CONSOLE_SCREENSHOT=docs/console.png`).
async fn screenshot_to_docs(client: &Client) {
    if let Ok(path) = std::env::var("QUARRY_CONSOLE_SCREENSHOT") {
        // A few more polls, so the latency lines have some history.
        for query in ["a rocket lifting off", "a sleeping kitten", "pasta for dinner"] {
            let field = client.find(Locator::Id("search-text")).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(&format!("{query}{}", enter())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        js(client, "document.querySelector('#experiment h3').scrollIntoView(); return true").await;
        std::fs::write(root().join(path), client.screenshot().await.unwrap()).unwrap();
    }
}

/// At 375 px, signed in with hits shown (and, with `charts`, an experiment's live charts),
/// nothing scrolls sideways.
async fn phone_width(client: &Client, server: &Server, key: &str, charts: bool) {
    client.goto(&server.url("/console")).await.unwrap();
    assert_eq!(js(client, "return window.innerWidth").await, 375, "the phone session is not 375 px wide");
    sign_in(client, key).await;
    wait_for(client, "the docs collection", "return document.querySelector('li[data-collection=\"docs\"]')").await;
    let field = client.find(Locator::Id("search-text")).await.unwrap();
    field.send_keys(&format!("a kitten napping in the sun{}", enter())).await.unwrap();
    wait_for(client, "hits", "return document.querySelectorAll('#hits li.hit').length").await;
    if charts {
        wait_for(client, "the experiment's charts", "return document.querySelector('#latency-chart svg') && document.querySelector('#delta-chart svg')").await;
    }
    let widths = js(client, "return [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]").await;
    assert!(widths[0].as_u64().unwrap() <= 375 && widths[1].as_u64().unwrap() <= 375, "the page scrolls sideways at 375 px: {widths}");
    // Nothing pokes out of the viewport either (overflow hidden would hide it, not fix it).
    let wide = js(client, "return [...document.querySelectorAll('#app *')].filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > 375.5 && !e.closest('.table-wrap'); }).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)").await;
    assert_eq!(wide, json!([]), "elements wider than the phone");
    if charts {
        js(client, "document.getElementById('experiments-view').scrollIntoView(); return true").await;
    }
    screenshot(client, if charts { "08-phone-experiment" } else { "07-phone" }).await;
}
