//! The Spin application manifest (`spin.toml`, `spin_manifest_version = 2`).
//!
//! Only what flashcart's host can honour is accepted: every table is
//! `deny_unknown_fields`, and keys Spin knows but this host does not implement
//! (`files`, `sqlite_databases`, …) are refused by name rather than ignored, because a
//! silently ignored key would make a component behave differently here than on Spin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::routes::{RouteError, Router};
use crate::template::{Template, TemplateError};

/// Why a manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, or a key or type the schema does not allow.
    #[error("{0}")]
    Toml(String),
    /// Not a v2 manifest.
    #[error("spin_manifest_version must be 2 (found {0}); flashcart reads Spin manifest v2")]
    Version(String),
    /// A key Spin knows that this host does not implement.
    #[error("{key}: not supported by flashcart's host ({why})")]
    Unsupported {
        /// Where the key is, e.g. `component.cart.files`.
        key: String,
        /// What to do instead.
        why: &'static str,
    },
    /// Something that parses but cannot be right.
    #[error("{0}")]
    Invalid(String),
    /// An HTTP route that cannot be used.
    #[error("trigger.http: {0}")]
    Route(#[from] RouteError),
    /// A `{{ ... }}` template that cannot be used.
    #[error("{key}: {source}")]
    Template {
        /// Where the template is.
        key: String,
        /// What is wrong with it.
        source: TemplateError,
    },
}

/// Result of manifest operations.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// A validated Spin v2 manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `[application]`.
    pub application: Application,
    /// `[variables]`: application variables by name.
    pub variables: BTreeMap<String, VariableDecl>,
    /// `[[trigger.http]]`, in manifest order.
    pub http_triggers: Vec<HttpTrigger>,
    /// `[component.<id>]` by id.
    pub components: BTreeMap<String, ComponentDecl>,
    /// Directory the manifest's relative paths are resolved against.
    pub base_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[expect(dead_code, reason = "checked before full deserialisation")]
    spin_manifest_version: toml::Value,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
}

/// `[application]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Application name.
    pub name: String,
    /// Application version.
    #[serde(default)]
    pub version: Option<String>,
    /// Authors.
    #[serde(default)]
    pub authors: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
}

/// An application variable declaration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Value used when no provider has one.
    #[serde(default)]
    pub default: Option<String>,
    /// Must be provided (by `SPIN_VARIABLE_<NAME>` or runtime config).
    #[serde(default)]
    pub required: bool,
    /// Never logged or shown.
    #[serde(default)]
    pub secret: bool,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Triggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    route: RawRoute,
    component: toml::Value,
    #[serde(default)]
    executor: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private(PrivateRoute),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateRoute {
    private: bool,
}

/// One `[[trigger.http]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    /// Trigger id, if given.
    pub id: Option<String>,
    /// The route pattern; `None` for `route = { private = true }` (not served).
    pub route: Option<String>,
    /// The component id it runs.
    pub component: String,
}

/// `[component.<id>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    /// Path to the `.wasm`, relative to the manifest.
    pub source: toml::Value,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Component variables: templates over application variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Environment variables the component sees.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Where the component may connect, e.g. `redis://{{ redis_address }}`.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Key-value store labels the component may open.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// How `flashcart build` builds the component.
    #[serde(default)]
    pub build: Option<BuildDecl>,
    #[serde(default)]
    files: Option<toml::Value>,
    #[serde(default)]
    exclude_files: Option<toml::Value>,
    #[serde(default)]
    sqlite_databases: Option<toml::Value>,
    #[serde(default)]
    ai_models: Option<toml::Value>,
    #[serde(default)]
    dependencies: Option<toml::Value>,
    #[serde(default)]
    dependencies_inherit_configuration: Option<toml::Value>,
    #[serde(default)]
    tool: Option<toml::Value>,
}

/// `[component.<id>.build]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDecl {
    /// The command(s), run by a shell in `workdir`.
    pub command: Commands,
    /// Directory to run in, relative to the manifest.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Files to watch (kept for Spin compatibility; `flashcart build` does not watch).
    #[serde(default)]
    pub watch: Vec<String>,
}

/// One command or several, run in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Commands {
    /// `command = "cargo build ..."`.
    One(String),
    /// `command = ["...", "..."]`.
    Many(Vec<String>),
}

impl Commands {
    /// The commands in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let list: Vec<&str> = match self {
            Self::One(c) => vec![c.as_str()],
            Self::Many(cs) => cs.iter().map(String::as_str).collect(),
        };
        list.into_iter()
    }
}

impl ComponentDecl {
    /// The `.wasm` path, resolved against the manifest directory.
    ///
    /// # Panics
    /// Never for a component of a validated [`Manifest`] (its source is checked).
    pub fn source_path(&self, base_dir: &Path) -> PathBuf {
        let source = self
            .source
            .as_str()
            .expect("validated manifest: source is a path");
        base_dir.join(source)
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid v2 manifest this host supports.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Self::parse(&text, &base_dir)
    }

    /// Parses and validates manifest text.
    ///
    /// # Errors
    /// When the text is not a valid v2 manifest this host supports; the message names
    /// the offending key.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self> {
        // The version decides the schema: check it first, so a v1 manifest gets this
        // message rather than a list of unknown v1 keys.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ManifestError::Toml(e.to_string()))?;
        match table.get("spin_manifest_version") {
            Some(toml::Value::Integer(2)) => {}
            Some(other) => return Err(ManifestError::Version(other.to_string())),
            None => return Err(ManifestError::Version("nothing".to_owned())),
        }
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Toml(e.to_string()))?;

        for (name, decl) in &raw.variables {
            check_variable_name(name, &format!("variables.{name}"))?;
            match (&decl.default, decl.required) {
                (Some(_), true) => {
                    return Err(ManifestError::Invalid(format!(
                        "variables.{name}: a variable is either required or has a default, not both"
                    )));
                }
                (None, false) => {
                    return Err(ManifestError::Invalid(format!(
                        "variables.{name}: give it a default or mark it required = true"
                    )));
                }
                _ => {}
            }
        }

        for (id, component) in &raw.component {
            check_component(id, component, &raw.variables)?;
        }

        let mut http_triggers = Vec::with_capacity(raw.trigger.http.len());
        for (i, trigger) in raw.trigger.http.into_iter().enumerate() {
            let component = match trigger.component {
                toml::Value::String(id) => id,
                _ => {
                    return Err(ManifestError::Unsupported {
                        key: format!("trigger.http[{i}].component"),
                        why: "name a [component.<id>] table instead of an inline component",
                    });
                }
            };
            if let Some(executor) = &trigger.executor {
                let spin = executor
                    .get("type")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|t| t == "spin");
                if !spin {
                    return Err(ManifestError::Unsupported {
                        key: format!("trigger.http[{i}].executor"),
                        why: "only the default `spin` executor (wasi:http components) runs here",
                    });
                }
            }
            if !raw.component.contains_key(&component) {
                return Err(ManifestError::Invalid(format!(
                    "trigger.http[{i}]: component `{component}` is not declared as [component.{component}]"
                )));
            }
            let route = match trigger.route {
                RawRoute::Path(path) => Some(path),
                RawRoute::Private(PrivateRoute { private: true }) => None,
                RawRoute::Private(PrivateRoute { private: false }) => {
                    return Err(ManifestError::Invalid(format!(
                        "trigger.http[{i}].route: `{{ private = false }}` is not a route; give a path"
                    )));
                }
            };
            http_triggers.push(HttpTrigger {
                id: trigger.id,
                route,
                component,
            });
        }

        let manifest = Self {
            application: raw.application,
            variables: raw.variables,
            http_triggers,
            components: raw.component,
            base_dir: base_dir.to_owned(),
        };
        // Refuse bad or duplicate routes at load, not at the first request.
        manifest.router()?;
        Ok(manifest)
    }

    /// The HTTP router: route pattern → component id.
    ///
    /// # Errors
    /// When a route is invalid or declared twice.
    pub fn router(&self) -> Result<Router<String>, RouteError> {
        Router::new(
            self.http_triggers
                .iter()
                .filter_map(|t| t.route.clone().map(|r| (r, t.component.clone()))),
        )
    }
}

fn check_variable_name(name: &str, key: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Invalid(format!(
            "{key}: variable names are lower-case letters, digits and `_`, starting with a letter"
        )))
    }
}

fn check_component(
    id: &str,
    c: &ComponentDecl,
    app_variables: &BTreeMap<String, VariableDecl>,
) -> Result<()> {
    let unsupported: [(&str, bool, &'static str); 7] = [
        (
            "files",
            c.files.is_some(),
            "flashcart functions get no filesystem",
        ),
        (
            "exclude_files",
            c.exclude_files.is_some(),
            "flashcart functions get no filesystem",
        ),
        (
            "sqlite_databases",
            c.sqlite_databases.is_some(),
            "use Redis or key-value",
        ),
        (
            "ai_models",
            c.ai_models.is_some(),
            "no LLM interface in the flashcart world",
        ),
        (
            "dependencies",
            c.dependencies.is_some(),
            "compose components before deploying",
        ),
        (
            "dependencies_inherit_configuration",
            c.dependencies_inherit_configuration.is_some(),
            "compose components before deploying",
        ),
        (
            "tool",
            c.tool.is_some(),
            "tool sections belong to Spin plugins",
        ),
    ];
    if let Some((key, _, why)) = unsupported.iter().find(|(_, present, _)| *present) {
        return Err(ManifestError::Unsupported {
            key: format!("component.{id}.{key}"),
            why,
        });
    }
    if c.source.as_str().is_none() {
        return Err(ManifestError::Unsupported {
            key: format!("component.{id}.source"),
            why: "give a local .wasm path; remote sources are not fetched",
        });
    }
    for (name, value) in &c.variables {
        let key = format!("component.{id}.variables.{name}");
        check_variable_name(name, &key)?;
        let template = Template::parse(value).map_err(|source| ManifestError::Template {
            key: key.clone(),
            source,
        })?;
        if let Some(missing) = template
            .references()
            .find(|r| !app_variables.contains_key(*r))
        {
            return Err(ManifestError::Invalid(format!(
                "{key}: refers to `{missing}`, which is not in [variables]"
            )));
        }
    }
    for host in &c.allowed_outbound_hosts {
        let key = format!("component.{id}.allowed_outbound_hosts");
        let template = Template::parse(host).map_err(|source| ManifestError::Template {
            key: key.clone(),
            source,
        })?;
        // Like Spin, templates here name the component's own variables.
        if let Some(missing) = template
            .references()
            .find(|r| !c.variables.contains_key(*r))
        {
            return Err(ManifestError::Invalid(format!(
                "{key}: `{host}` refers to `{missing}`, which is not in [component.{id}.variables]"
            )));
        }
        if !host.contains("://") {
            return Err(ManifestError::Invalid(format!(
                "{key}: `{host}` needs a scheme, e.g. `redis://{host}`"
            )));
        }
    }
    if let Some(label) = c.key_value_stores.iter().find(|l| l.as_str() != "default") {
        return Err(ManifestError::Unsupported {
            key: format!("component.{id}.key_value_stores"),
            why: if label.is_empty() {
                "store labels cannot be empty"
            } else {
                "only the `default` store exists on a flashcart node"
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
spin_manifest_version = 2

[application]
name = "shop"
version = "0.1.0"

[variables]
redis_address = { default = "127.0.0.1:6379" }
api_key = { required = true, secret = true }

[[trigger.http]]
route = "/v1/stock/:sku"
component = "stock"

[[trigger.http]]
route = { private = true }
component = "stock"

[component.stock]
source = "target/stock.wasm"
allowed_outbound_hosts = ["redis://{{ redis_address }}"]
key_value_stores = ["default"]
[component.stock.variables]
redis_address = "{{ redis_address }}"
[component.stock.build]
command = "cargo build --target wasm32-wasip2 --release"
watch = ["src/**/*.rs"]
"#;

    #[test]
    fn parses_a_v2_manifest() -> Result<()> {
        let m = Manifest::parse(GOOD, Path::new("/app"))?;
        assert_eq!(m.application.name, "shop");
        assert_eq!(m.http_triggers.len(), 2);
        assert_eq!(m.http_triggers[1].route, None);
        let stock = &m.components["stock"];
        assert_eq!(
            stock.source_path(&m.base_dir),
            Path::new("/app/target/stock.wasm")
        );
        assert!(m.variables["api_key"].secret);
        let router = m.router()?;
        assert_eq!(
            router.route("/v1/stock/x").map(|r| r.target.as_str()),
            Some("stock")
        );
        Ok(())
    }
}
