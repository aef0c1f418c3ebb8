//! Test support: finding the test components and a server on 127.0.0.1:0 (a private
//! redis-server comes from flashcart-testkit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use flashcart_host::{App, AppConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The `.wasm` of test component `name` (crate `fc-test-<name>`).
///
/// # Panics
/// When it has not been built, saying how to build it.
pub(crate) fn wasm(name: &str) -> PathBuf {
    let path = flashcart_testkit::target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("fc_test_{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "test component {} is missing: build the test components first with \
         `scripts/build-test-components.sh` (same CARGO_TARGET_DIR as `cargo test`)",
        path.display()
    );
    path
}

/// One compiled-code cache for the whole test binary: the first test compiles each
/// component, the others load it.
fn cache_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("cache tempdir"))
        .path()
        .to_owned()
}

/// A host serving a manifest on 127.0.0.1:0, stopped on drop.
pub(crate) struct TestServer {
    pub(crate) address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// A response.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl TestServer {
    /// Writes `manifest` (with `{wasm:<name>}` replaced by the component's path) to a
    /// temp dir, loads it with `configure` applied and serves it.
    pub(crate) async fn start(manifest: &str, configure: impl FnOnce(&mut AppConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spin.toml");
        std::fs::write(&path, expand(manifest)).expect("write manifest");
        let mut config = AppConfig::new(&path);
        config.runtime.cache_dir = Some(cache_dir());
        config.runtime.max_instances = 16;
        configure(&mut config);
        let app = Arc::new(App::load(&config).unwrap_or_else(|e| panic!("load: {e}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flashcart_host::run(app, listener, async {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub(crate) async fn request(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let (status, headers, body) =
            flashcart_host::bench::http_request(self.address, method, path, body)
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, b"").await
    }

    /// Stops the server and waits for `run` to return.
    pub(crate) async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Replaces `{wasm:<name>}` with the path of that test component.
pub(crate) fn expand(manifest: &str) -> String {
    let mut out = String::new();
    let mut rest = manifest;
    while let Some(start) = rest.find("{wasm:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after.find('}').expect("closed {wasm:...}");
        out.push_str(&wasm(&after[..end]).display().to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
