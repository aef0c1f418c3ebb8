//! A loaded application: the manifest's components compiled, checked and
//! pre-instantiated, their variables and outbound hosts resolved, and the router.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::handler::{ComponentHandler, Reuse};
use crate::instance::{ComponentContext, RequestState};
use crate::key_value::KeyValueStore;
use crate::manifest::Manifest;
use crate::outbound::{AllowedHost, AllowedHosts};
use crate::redis_pool::RedisPool;
use crate::routes::Router;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::runtime_config::{KeyValueStoreConfig, RuntimeConfigFile};
use crate::template::Template;
use crate::variables::{AppVariables, Providers};
use crate::{Error, Result};

/// Everything `flashcart up` needs to load an application.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The `spin.toml`.
    pub manifest: PathBuf,
    /// `--runtime-config-file`.
    pub runtime_config: Option<PathBuf>,
    /// Variable providers (CLI flags and process environment).
    pub providers: Providers,
    /// Extra environment for every component (`--env KEY=VALUE`).
    pub env: Vec<(String, String)>,
    /// Engine settings.
    pub runtime: RuntimeConfig,
    /// A request's deadline, instantiation included.
    pub request_timeout: Duration,
    /// Largest request body accepted (bigger is answered 413).
    pub max_body_bytes: usize,
    /// How instances are reused across requests.
    pub reuse: Reuse,
    /// Limits on client connections (slow or idle clients, too many of them).
    pub connections: Connections,
    /// Load only these components (and serve only their routes); `None` loads every
    /// component of the manifest. `flashcart bench cold-start` measures one component at a
    /// time this way, so a component's figures do not move when another one changes.
    pub components: Option<Vec<String>>,
}

/// Limits on client connections, so slow or idle clients cannot lock buyers out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Time a client has to send a request's whole header, counted from the moment the
    /// connection waits for one: also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body once its header arrived.
    pub body_read_timeout: Duration,
    /// Open client connections at most; beyond it the listener stops accepting until one
    /// closes (connections wait in the kernel's backlog).
    pub max_connections: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

impl AppConfig {
    /// Defaults for `manifest`: pooling allocator, no cache, 10 s deadline, 1 MiB bodies,
    /// instances reused as Spin 4.1 does ([`Reuse::default`]).
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            runtime_config: None,
            providers: Providers::default(),
            env: Vec::new(),
            runtime: RuntimeConfig::default(),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            reuse: Reuse::default(),
            connections: Connections::default(),
            components: None,
        }
    }
}

/// One component, ready to serve.
#[derive(Clone)]
pub struct AppComponent {
    /// Shared per-component context (variables, hosts, stores).
    pub context: Arc<ComponentContext>,
    /// The pre-instantiated handler.
    pub pre: ServicePre<RequestState>,
    /// Serves requests on (reused) instances of `pre`.
    pub handler: Arc<ComponentHandler>,
    /// Compile (or cache load) time at start.
    pub load_time: Duration,
}

/// A loaded application.
pub struct App {
    runtime: Runtime,
    router: Router<usize>,
    components: Vec<AppComponent>,
    request_timeout: Duration,
    max_body_bytes: usize,
    connections: Connections,
    name: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("components", &self.components.len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Loads the manifest, resolves variables, compiles and pre-instantiates every
    /// component.
    ///
    /// # Errors
    /// Any problem with the manifest, runtime config, variables or a component; the
    /// message names the key, variable, component or import at fault.
    pub fn load(config: &AppConfig) -> Result<Self> {
        let manifest = Manifest::load(&config.manifest)?;
        let runtime_config = match &config.runtime_config {
            Some(path) => RuntimeConfigFile::load(path)?,
            None => RuntimeConfigFile::default(),
        };
        let mut providers = config.providers.clone();
        providers.runtime_config = runtime_config.variables.clone();
        let variables = AppVariables::resolve(&manifest, &providers)?;

        let key_value = match runtime_config.key_value_store.get("default") {
            Some(KeyValueStoreConfig::Spin { path }) => {
                let path = path
                    .clone()
                    .unwrap_or_else(|| manifest.base_dir.join(".spin").join("sqlite_key_value.db"));
                KeyValueStore::sqlite(&path)?
            }
            Some(KeyValueStoreConfig::Memory) | None => KeyValueStore::in_memory(),
        };
        let redis = Arc::new(RedisPool::new());
        let runtime = Runtime::new(config.runtime.clone())?;

        if let Some(only) = &config.components
            && let Some(unknown) = only
                .iter()
                .find(|id| !manifest.components.contains_key(*id))
        {
            return Err(Error::Invalid(format!(
                "no component `{unknown}` in {} (it has: {})",
                config.manifest.display(),
                manifest
                    .components
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut ids = Vec::new();
        let mut components = Vec::new();
        for (id, decl) in &manifest.components {
            if config
                .components
                .as_ref()
                .is_some_and(|only| !only.contains(id))
            {
                continue;
            }
            let component_variables = variables.component_variables(decl)?;
            let mut allowed = Vec::new();
            for entry in &decl.allowed_outbound_hosts {
                let template = Template::parse(entry).map_err(|e| {
                    Error::Invalid(format!("component.{id}.allowed_outbound_hosts: {e}"))
                })?;
                let rendered = template.render(|name| {
                    component_variables
                        .get(name)
                        .map(|v| v.expose().to_owned())
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "component.{id}.allowed_outbound_hosts: no variable `{name}`"
                            ))
                        })
                })?;
                allowed.push(AllowedHost::parse(&rendered).map_err(|e| {
                    Error::Invalid(format!("component.{id}.allowed_outbound_hosts: {e}"))
                })?);
            }
            let mut environment: Vec<(String, String)> = decl
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            environment.extend(config.env.iter().cloned());

            let loaded = runtime.load(id, &decl.source_path(&manifest.base_dir))?;
            tracing::info!(
                component = %id,
                load_ms = loaded.load_time.as_secs_f64() * 1e3,
                "component ready"
            );
            let context = Arc::new(ComponentContext {
                id: id.clone(),
                variables: component_variables,
                allowed_hosts: AllowedHosts::new(allowed),
                key_value: decl
                    .key_value_stores
                    .iter()
                    .any(|l| l == "default")
                    .then(|| key_value.clone()),
                redis: Arc::clone(&redis),
                environment,
                max_memory_bytes: config.runtime.max_memory_bytes,
            });
            ids.push(id.clone());
            let handler = Arc::new(ComponentHandler::new(
                loaded.pre.clone(),
                Arc::clone(&context),
                config.reuse,
                config.request_timeout,
            ));
            components.push(AppComponent {
                context,
                handler,
                pre: loaded.pre,
                load_time: loaded.load_time,
            });
        }

        // Routes to components left out (`AppConfig::components`) are dropped here.
        let router = Router::new(manifest.http_triggers.iter().filter_map(|t| {
            let index = ids.iter().position(|id| *id == t.component)?;
            t.route.clone().map(|r| (r, index))
        }))
        .map_err(crate::manifest::ManifestError::from)?;

        Ok(Self {
            runtime,
            router,
            components,
            request_timeout: config.request_timeout,
            max_body_bytes: config.max_body_bytes,
            connections: config.connections,
            name: manifest.application.name,
        })
    }

    /// The application name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The components, in manifest (id) order.
    pub fn components(&self) -> &[AppComponent] {
        &self.components
    }

    /// The component serving `path`, with Spin's match details.
    pub fn route(&self, path: &str) -> Option<crate::routes::RouteMatch<'_, usize>> {
        self.router.route(path)
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The request body limit.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The client connection limits.
    pub fn connections(&self) -> Connections {
        self.connections
    }

    /// The engine settings.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
