//! A real headless Chromium, driven through Debian's `chromedriver` over WebDriver (fantoccini).
//!
//! [`Browser::start`] returns `None` — after saying the test was skipped and why — when
//! `chromium` or `chromedriver` is not installed, unless `CI` is set: then it fails, since
//! `.ci/run` installs both. Screenshots go to `target/console-screenshots/`.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a condition on the page may take to become true.
const PAGE_WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: Child,
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Start chromedriver and a headless Chromium at 1280×900, or `None` when they are absent
    /// outside CI (see the module docs).
    pub async fn start(test: &str) -> Option<Browser> {
        let chromium = on_path(&["chromium", "chromium-browser"]);
        let driver = on_path(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver, as .ci/run does)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; they are required under CI");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        };
        let port = super::free_port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
            }
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("{test}: no WebDriver session from chromedriver: {e}");
                }
            }
        };
        Some(Browser {
            client,
            driver: child,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Run `script` (a function body; `arguments` are `args`) and return its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Wait until `script` returns `true`, failing with `what` after [`PAGE_WAIT`].
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if self.js(script, vec![]).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let flash = self
                    .js("return document.body.innerText.slice(0, 2000)", vec![])
                    .await;
                panic!("timed out waiting for {what}; page text: {flash}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the element `css` is displayed.
    pub async fn wait_visible(&self, css: &str) {
        let script = format!(
            "const e = document.querySelector({}); return !!e && e.offsetParent !== null;",
            json!(css)
        );
        self.wait_until(&format!("{css} to show"), &script).await;
    }

    /// Clear the field `css` and type `text` into it, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// The text of `css` (textContent, as rendered into the DOM).
    pub async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.js(&script, vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Save a screenshot as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// End the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still stops its chromedriver (and with it, Chromium).
        let _ = self.driver.kill();
    }
}
