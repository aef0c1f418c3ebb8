//! Spin's `{{ name }}` templates, as used in component variables and
//! `allowed_outbound_hosts`: literal text with variable references in double braces.

use thiserror::Error;

/// A template that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{` without `}}`.
    #[error("`{0}`: `{{{{` is not closed by `}}}}`")]
    Unclosed(String),
    /// `{{ }}` or a reference that is not a variable name.
    #[error("`{0}`: `{1}` is not a variable name")]
    BadReference(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`.
    ///
    /// # Errors
    /// When a `{{` is unclosed or encloses something that is not a variable name.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let name = after[..end].trim();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(TemplateError::BadReference(
                    text.to_owned(),
                    name.to_owned(),
                ));
            }
            parts.push(Part::Variable(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variable names the template refers to.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders the template, looking each reference up with `lookup`.
    ///
    /// # Errors
    /// The first error `lookup` returns.
    pub fn render<E>(
        &self,
        mut lookup: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(name) => out.push_str(&lookup(name)?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_references() {
        let t = Template::parse("redis://{{ redis_address }}/{{db}}").expect("valid");
        assert_eq!(t.references().collect::<Vec<_>>(), ["redis_address", "db"]);
        let out: Result<String, ()> = t.render(|name| Ok(name.to_uppercase()));
        assert_eq!(out, Ok("redis://REDIS_ADDRESS/DB".to_owned()));
        let plain = Template::parse("no refs").expect("valid");
        assert_eq!(plain.references().count(), 0);
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(
            Template::parse("{{ x"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("{{ Bad }}"),
            Err(TemplateError::BadReference(_, _))
        ));
        assert!(matches!(
            Template::parse("{{ }}"),
            Err(TemplateError::BadReference(_, _))
        ));
    }
}
