//! A real headless Chromium for the dashboard tests: Debian's `chromedriver` (package
//! chromium-driver) started as a child process on a free loopback port, killed on drop, with its
//! own temporary profile, driven over WebDriver with fantoccini. One [`Browser`] per test, so
//! tests run in parallel without sharing a port, a profile or cookies.
//!
//! A missing chromedriver or chromium fails the test with the package to install: browser tests
//! never skip. Waits go through flotilla-testkit's [`eventually`]; nothing here sleeps.

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use flotilla_testkit::eventually;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command as Process};

/// Debian's chromedriver (package chromium-driver).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium (package chromium).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "flotilla_session";
/// Upper bound for a page effect (a load, a live swap) that normally takes well under a second.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// Panics (never skips) unless chromedriver and chromium are installed.
pub fn require_installed() {
    for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser tests need Debian's {package} package \
             (apt-get install chromium chromium-driver; scripts/test installs it)"
        );
    }
}

/// Where screenshots go: `target/screenshots/` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    // bin_dir is target/debug; its parent is target.
    crate::harness::bin_dir()
        .parent()
        .expect("target dir")
        .join("screenshots")
}

/// One chromedriver process and one WebDriver session of headless Chromium.
pub struct Browser {
    pub client: Client,
    /// The relay the browser talks to (`http://127.0.0.1:port`).
    pub base: String,
    driver: Child,
    /// chromedriver's URL (`http://127.0.0.1:port`).
    driver_url: String,
    _profile: tempfile::TempDir,
    log_path: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session for the relay at
    /// `base`.
    pub async fn start(base: &str) -> Browser {
        require_installed();
        let profile = tempfile::Builder::new()
            .prefix("flotilla-chromium-")
            .tempdir()
            .expect("tempdir for the Chromium profile");
        let log_path = profile.path().join("chromedriver.log");
        let port = crate::harness::free_port();
        let driver = Process::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(Duration::from_secs(20), "chromedriver /status", || {
            let status = status.clone();
            async move {
                let r = reqwest::get(&status).await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let user_data = profile.path().join("profile");
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", format!("--user-data-dir={}", user_data.display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start headless Chromium through chromedriver: {e}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            });
        Browser {
            client,
            base: base.trim_end_matches('/').to_string(),
            driver,
            driver_url: url,
            _profile: profile,
            log_path,
        }
    }

    /// The relay URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens `path` on the relay.
    pub async fn open(&self, path: &str) {
        let url = self.url(path);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The path (and query) of the page shown now.
    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("current url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// Signs in on /ui/login with `token` (typed into the field, the form submitted) and waits
    /// for the overview.
    pub async fn sign_in(&self, token: &str) {
        self.open("/ui/login").await;
        let field = self.wait_for("#login input[name=token]").await;
        field.send_keys(token).await.expect("type the token");
        self.wait_for("#login [data-test=sign-in]")
            .await
            .click()
            .await
            .expect("submit the sign-in form");
        eventually(PAGE_DEADLINE, "the overview after signing in", || async {
            let signed_in = self
                .client
                .find(Locator::Css("meta[name=csrf-token]"))
                .await
                .is_ok();
            (signed_in && self.path().await == "/ui/").then_some(())
        })
        .await;
    }

    /// Signs out with the page's own form.
    pub async fn sign_out(&self) {
        self.wait_for("#logout [data-test=sign-out]")
            .await
            .click()
            .await
            .expect("click sign out");
        eventually(
            PAGE_DEADLINE,
            "the sign-in page after signing out",
            || async { (self.path().await == "/ui/login").then_some(()) },
        )
        .await;
    }

    /// Waits until an element matches `css` and returns it.
    pub async fn wait_for(&self, css: &str) -> Element {
        eventually(PAGE_DEADLINE, &format!("an element {css}"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Every element matching `css` now (maybe none).
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// Waits until the text of the first element matching `css` satisfies `pred`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let pred = &pred;
        eventually(PAGE_DEADLINE, what, || async move {
            let e = self.client.find(Locator::Css(css)).await.ok()?;
            let t = e.text().await.ok()?;
            pred(&t).then_some(t)
        })
        .await
    }

    /// `#content[data-live-revision]` now: the live refresh increments it on every swap.
    pub async fn live_revision(&self) -> u64 {
        let v = self
            .client
            .execute(
                "const c = document.getElementById('content'); \
                 return c ? c.getAttribute('data-live-revision') : null;",
                vec![],
            )
            .await
            .expect("read data-live-revision");
        v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Clicks an action button, then the confirm dialog's "yes".
    pub async fn click_confirmed(&self, button: &Element) {
        button.click().await.expect("click the action");
        self.confirm().await;
    }

    /// Confirms the open `<dialog id="confirm">`.
    pub async fn confirm(&self) {
        eventually(PAGE_DEADLINE, "the confirm dialog to open", || async {
            let open = self
                .client
                .execute(
                    "const d = document.getElementById('confirm'); return !!(d && d.open);",
                    vec![],
                )
                .await
                .ok()?;
            (open == true).then_some(())
        })
        .await;
        self.wait_for("#confirm-yes")
            .await
            .click()
            .await
            .expect("click confirm");
    }

    /// Waits for the `#flash` outcome of an action and returns (ok, text).
    pub async fn flash(&self) -> (bool, String) {
        eventually(PAGE_DEADLINE, "an outcome in #flash", || async {
            let v = self
                .client
                .execute(
                    "const f = document.getElementById('flash'); \
                     return f ? [f.className, f.textContent] : null;",
                    vec![],
                )
                .await
                .ok()?;
            let class = v.get(0)?.as_str()?.to_string();
            let text = v.get(1)?.as_str()?.to_string();
            if class.contains("flash-ok") {
                Some((true, text))
            } else if class.contains("flash-error") {
                Some((false, text))
            } else {
                None
            }
        })
        .await
    }

    /// Writes a PNG of the viewport to `target/screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("take a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The browser console's messages so far (level and text), drained: chromedriver's
    /// `se/log` endpoint, which fantoccini does not wrap.
    pub async fn console(&self) -> Vec<(String, String)> {
        let session = self
            .client
            .session_id()
            .await
            .expect("session id")
            .expect("a WebDriver session");
        let v: Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("read the browser console log")
            .json()
            .await
            .expect("the console log is JSON");
        v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Panics if a script set `window.__pwned` (what every injected test payload does).
    pub async fn assert_no_injected_script(&self) {
        let pwned = self
            .client
            .execute("return typeof window.__pwned;", vec![])
            .await
            .expect("read window.__pwned");
        assert_eq!(
            pwned,
            "undefined",
            "an injected script ran on {}",
            self.path().await
        );
    }

    /// The session cookie's value, if the browser holds one.
    pub async fn session_cookie(&self) -> Option<String> {
        self.client
            .get_named_cookie(SESSION_COOKIE)
            .await
            .ok()
            .map(|c| c.value().to_string())
    }

    /// The page's CSRF token (`<meta name="csrf-token">`).
    pub async fn csrf(&self) -> String {
        self.wait_for("meta[name=csrf-token]")
            .await
            .attr("content")
            .await
            .expect("read the csrf meta")
            .expect("the csrf meta has content")
    }

    /// `fetch` from inside the page (its cookie, same origin); returns status and body text.
    pub async fn fetch_in_page(
        &self,
        method: &str,
        path: &str,
        headers: Value,
        body: Option<&str>,
    ) -> (u16, String) {
        let v = self
            .client
            .execute_async(
                "const [method, url, headers, body, done] = arguments; \
                 const init = {method, headers, credentials: 'same-origin', redirect: 'manual'}; \
                 if (body !== null) init.body = body; \
                 fetch(url, init).then(async r => done([r.status, await r.text()])) \
                   .catch(e => done([0, String(e)]));",
                vec![json!(method), json!(path), headers, json!(body)],
            )
            .await
            .unwrap_or_else(|e| panic!("fetch {method} {path} in the page: {e}"));
        let status = v[0].as_u64().unwrap_or(0) as u16;
        (status, v[1].as_str().unwrap_or("").to_string())
    }

    /// Ends the WebDriver session (chromedriver itself is killed on drop).
    pub async fn close(self) -> Result<()> {
        self.client
            .clone()
            .close()
            .await
            .map_err(|e| anyhow!("close the browser: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.log_path) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                eprintln!(
                    "---- last lines of chromedriver ({}) ----",
                    self.log_path.display()
                );
                for l in &lines[from..] {
                    eprintln!("{l}");
                }
            }
        }
        let _ = self.driver.start_kill();
    }
}

/// A request with a session cookie from outside the browser (no redirects followed), e.g. an
/// old cookie after sign-out, or a forged POST.
pub struct CookieClient {
    base: String,
    cookie: String,
    http: reqwest::Client,
}

impl CookieClient {
    pub fn new(base: &str, session: &str) -> CookieClient {
        CookieClient {
            base: base.trim_end_matches('/').to_string(),
            cookie: format!("{SESSION_COOKIE}={session}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
        }
    }

    /// Sends `method path` with the cookie, optional `X-CSRF-Token` and JSON body; returns the
    /// status, the `Location` header and the body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Option<String>, String)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie);
        if let Some(csrf) = csrf {
            req = req.header("X-CSRF-Token", csrf);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.context("request with the cookie")?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = resp.text().await.context("response body")?;
        if status == 0 {
            bail!("no status");
        }
        Ok((status, location, text))
    }
}
