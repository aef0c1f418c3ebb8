//! Application variables, resolved the way Spin resolves them.
//!
//! Providers, first answer wins: `--variable name=value` on the command line, the
//! `SPIN_VARIABLE_<NAME>` environment variable, the runtime config file's
//! `[variables]`, then the manifest default. A `required` variable nobody provides
//! stops the host at start, as it stops `spin up`. All providers are static, so every
//! variable and every component variable is resolved once, at load; a request only
//! reads a map.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

use crate::manifest::{ComponentDecl, Manifest, VariableDecl};
use crate::template::Template;

/// A variable could not be resolved at load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VariableError {
    /// Required and not provided by anyone.
    #[error(
        "variable `{0}` is required: set SPIN_VARIABLE_{upper} or give it in the runtime config",
        upper = .0.to_uppercase()
    )]
    Missing(String),
    /// Referenced but not declared.
    #[error("variable `{0}` is not declared in [variables]")]
    Undeclared(String),
}

/// A variable's value. One derived from a `secret = true` variable is kept in `secrecy`'s
/// box: it never prints itself (secrets must not reach logs) and is zeroed when dropped.
#[derive(Clone)]
pub enum Value {
    /// Derived from no secret variable: prints as it is.
    Plain(String),
    /// Derived from at least one secret variable.
    Secret(SecretString),
}

impl Value {
    fn new(text: String, secret: bool) -> Self {
        if secret {
            Value::Secret(text.into())
        } else {
            Value::Plain(text)
        }
    }

    /// The value itself; the caller decides whether it may be shown.
    pub fn expose(&self) -> &str {
        match self {
            Value::Plain(text) => text,
            Value::Secret(secret) => secret.expose_secret(),
        }
    }

    /// Whether the value derives from a `secret = true` variable.
    pub fn is_secret(&self) -> bool {
        matches!(self, Value::Secret(_))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Plain(text) => write!(f, "Value({text:?})"),
            Value::Secret(_) => f.write_str("Value(<secret>)"),
        }
    }
}

/// Where variable values come from, highest priority first.
#[derive(Debug, Default, Clone)]
pub struct Providers {
    /// `--variable name=value` flags.
    pub cli: BTreeMap<String, String>,
    /// The process environment (`SPIN_VARIABLE_*` is read from it).
    pub env: BTreeMap<String, String>,
    /// The runtime config file's `[variables]`.
    pub runtime_config: BTreeMap<String, String>,
}

impl Providers {
    /// Providers with the current process environment.
    pub fn from_process_env() -> Self {
        Self {
            env: std::env::vars().collect(),
            ..Self::default()
        }
    }

    fn lookup(&self, name: &str, decl: &VariableDecl) -> Result<String, VariableError> {
        if let Some(v) = self.cli.get(name) {
            return Ok(v.clone());
        }
        let env_name = format!("SPIN_VARIABLE_{}", name.to_uppercase());
        if let Some(v) = self.env.get(&env_name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.runtime_config.get(name) {
            return Ok(v.clone());
        }
        decl.default
            .clone()
            .ok_or_else(|| VariableError::Missing(name.to_owned()))
    }
}

/// Every application variable's value.
#[derive(Debug, Clone)]
pub struct AppVariables {
    values: BTreeMap<String, Value>,
}

impl AppVariables {
    /// Resolves every declared variable.
    ///
    /// # Errors
    /// [`VariableError::Missing`] for a required variable that no provider has.
    pub fn resolve(manifest: &Manifest, providers: &Providers) -> Result<Self, VariableError> {
        let mut values = BTreeMap::new();
        for (name, decl) in &manifest.variables {
            let text = providers.lookup(name, decl)?;
            values.insert(name.clone(), Value::new(text, decl.secret));
        }
        Ok(Self { values })
    }

    /// The value of application variable `name`, if it is declared.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Renders a component's variables (templates over application variables).
    ///
    /// # Errors
    /// When a template names an undeclared variable (the manifest check prevents it).
    pub fn component_variables(
        &self,
        component: &ComponentDecl,
    ) -> Result<BTreeMap<String, Value>, VariableError> {
        let mut out = BTreeMap::new();
        for (name, template) in &component.variables {
            let template =
                Template::parse(template).map_err(|_| VariableError::Undeclared(name.clone()))?;
            let mut secret = false;
            let text = template.render(|reference| {
                let value = self
                    .values
                    .get(reference)
                    .ok_or_else(|| VariableError::Undeclared(reference.to_owned()))?;
                secret |= value.is_secret();
                Ok(value.expose().to_owned())
            })?;
            out.insert(name.clone(), Value::new(text, secret));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
greeting = { default = "hello" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
[component.c.variables]
message = "{{ greeting }}, {{ token }}"
plain = "{{ greeting }}"
"#;

    #[test]
    fn provider_order_is_cli_env_runtime_config_default() {
        let manifest = Manifest::parse(MANIFEST, Path::new(".")).expect("valid manifest");
        let mut providers = Providers::default();
        assert_eq!(
            AppVariables::resolve(&manifest, &providers).err(),
            Some(VariableError::Missing("token".into()))
        );

        providers
            .runtime_config
            .insert("token".into(), "from-file".into());
        providers
            .runtime_config
            .insert("greeting".into(), "hi".into());
        let vars = AppVariables::resolve(&manifest, &providers).expect("resolves");
        let c = vars
            .component_variables(&manifest.components["c"])
            .expect("renders");
        assert_eq!(c["message"].expose(), "hi, from-file");
        assert!(c["message"].is_secret());
        assert!(!c["plain"].is_secret());
        assert_eq!(format!("{:?}", c["message"]), "Value(<secret>)");

        providers
            .env
            .insert("SPIN_VARIABLE_TOKEN".into(), "from-env".into());
        providers.cli.insert("greeting".into(), "hey".into());
        let vars = AppVariables::resolve(&manifest, &providers).expect("resolves");
        let c = vars
            .component_variables(&manifest.components["c"])
            .expect("renders");
        assert_eq!(c["message"].expose(), "hey, from-env");
    }
}
