//! Spin's HTTP route matching.
//!
//! A route is exact (`/cart`), ends in a trailing wildcard (`/cart/...`, which also
//! matches `/cart` itself), and may hold single-segment parameters (`/skus/:sku`).
//! When several routes match a path the most specific wins, as Spin documents it:
//! an exact route beats any wildcard, a single-segment parameter beats a trailing
//! wildcard, and among wildcards the longest matching prefix wins.
//!
//! Specificity is decided segment by segment from the left, ranking what each route
//! has at that position: the route ending there (exact) > a literal segment > a
//! parameter > the trailing wildcard. Two routes that both match one path differ first
//! at a position where exactly these comparisons decide, so sorting all routes once by
//! this order and taking the first match gives Spin's answer with no per-request sort.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use thiserror::Error;

/// A route that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    /// Routes are absolute paths.
    #[error("route `{0}` must start with `/`")]
    NotAbsolute(String),
    /// `...` is only allowed as the last segment.
    #[error("route `{0}`: `...` is only allowed as the last segment")]
    WildcardNotLast(String),
    /// `:` without a name.
    #[error("route `{0}`: a `:` parameter needs a name")]
    EmptyParam(String),
    /// Two triggers with the same pattern: which one serves it would be arbitrary.
    #[error("duplicate route `{0}` (also declared as `{1}`)")]
    Duplicate(String, String),
}

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route pattern, e.g. `/v1/stock/:sku/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    raw: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// What a path matched: the component to run and what Spin tells it about the match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a, T> {
    /// The value registered with the route (the component id in the host).
    pub target: &'a T,
    /// The route pattern as written in the manifest (`spin-raw-component-route`).
    pub route: &'a str,
    /// The pattern without a trailing `/...` (`spin-component-route`).
    pub component_route: String,
    /// The part of the path after what the route matched (`spin-path-info`).
    pub path_info: String,
    /// Parameter values by name (`spin-path-match-<name>`).
    pub params: BTreeMap<String, String>,
}

impl Route {
    /// Parses a route pattern.
    ///
    /// # Errors
    /// When the pattern is not absolute, has `...` before the end or an unnamed `:`.
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(RouteError::NotAbsolute(raw.to_owned()));
        };
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut wildcard = false;
        for (i, part) in parts.iter().enumerate() {
            if *part == "..." {
                if i + 1 != parts.len() {
                    return Err(RouteError::WildcardNotLast(raw.to_owned()));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() {
                    return Err(RouteError::EmptyParam(raw.to_owned()));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
            wildcard,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Rank of what this route has at `pos` (higher is more specific).
    fn rank_at(&self, pos: usize) -> u8 {
        match self.segments.get(pos) {
            Some(Segment::Literal(_)) => 3,
            Some(Segment::Param(_)) => 2,
            None if pos == self.segments.len() && !self.wildcard => 4,
            None if pos == self.segments.len() => 1,
            // Past the end of a route: it can no longer match, rank it lowest.
            None => 0,
        }
    }

    /// More specific first.
    fn specificity(&self, other: &Self) -> Ordering {
        let len = self.segments.len().max(other.segments.len()) + 1;
        for pos in 0..len {
            let by_rank = other.rank_at(pos).cmp(&self.rank_at(pos));
            if by_rank != Ordering::Equal {
                return by_rank;
            }
            if let (Some(Segment::Literal(a)), Some(Segment::Literal(b))) =
                (self.segments.get(pos), other.segments.get(pos))
            {
                // Different literals never match the same path; order them stably.
                let by_text = a.cmp(b);
                if by_text != Ordering::Equal {
                    return by_text;
                }
            }
        }
        Ordering::Equal
    }

    /// Matches `path` (without query), returning the path info and the parameters.
    fn matches(&self, path: &str) -> Option<(String, BTreeMap<String, String>)> {
        let mut rest = path.strip_prefix('/')?;
        let mut params = BTreeMap::new();
        for segment in &self.segments {
            let (head, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            if head.is_empty() {
                return None;
            }
            match segment {
                Segment::Literal(lit) if lit == head => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), head.to_owned());
                }
            }
            rest = tail;
        }
        if self.wildcard {
            let info = if rest.is_empty() {
                // `/cart/` and `/cart` both have no path info below `/cart/...`
                if path.ends_with('/') && !self.segments.is_empty() {
                    "/".to_owned()
                } else {
                    String::new()
                }
            } else {
                format!("/{rest}")
            };
            Some((info, params))
        } else if rest.is_empty() {
            Some((String::new(), params))
        } else {
            None
        }
    }

    /// The pattern with any trailing `/...` removed.
    fn component_route(&self) -> String {
        let trimmed = self.raw.trim_end_matches("...").trim_end_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else {
            trimmed.to_owned()
        }
    }
}

/// Routes requests to targets, most specific route first.
#[derive(Debug, Clone)]
pub struct Router<T> {
    routes: Vec<(Route, T)>,
}

impl<T> Router<T> {
    /// Builds a router from `(pattern, target)` pairs.
    ///
    /// # Errors
    /// When a pattern is invalid, or two patterns are the same route (parameter names
    /// aside, `/a/:x` and `/a/:y` are the same route).
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Result<Self, RouteError> {
        let mut parsed = Vec::new();
        for (raw, target) in routes {
            parsed.push((Route::parse(&raw)?, target));
        }
        parsed.sort_by(|(a, _), (b, _)| a.specificity(b));
        for pair in parsed.windows(2) {
            let (a, b) = (&pair[0].0, &pair[1].0);
            if a.specificity(b) == Ordering::Equal {
                return Err(RouteError::Duplicate(b.raw.clone(), a.raw.clone()));
            }
        }
        Ok(Self { routes: parsed })
    }

    /// The most specific route matching `path`, if any.
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_, T>> {
        self.routes.iter().find_map(|(route, target)| {
            route.matches(path).map(|(path_info, params)| RouteMatch {
                target,
                route: route.as_str(),
                component_route: route.component_route(),
                path_info,
                params,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table follows Spin's documented rules (HTTP trigger page, "HTTP Trigger
    /// Routes", and the SDK router's "same logic as overlapping routes in the manifest").
    #[test]
    fn spin_route_table() {
        let router = Router::new(
            [
                "/cart",
                "/cart/checkout",
                "/cart/...",
                "/users/:id",
                "/users/:id/orders/...",
                "/users/admin",
                "/shop/...",
                "/shop/books/...",
                "/v1/stock/:sku",
                "/v1/stock/:sku/reservations",
                "/v1/:kind/:id",
                "/...",
            ]
            .into_iter()
            .map(|r| (r.to_owned(), r.to_owned())),
        )
        .expect("valid routes");

        /// (path, expected route, expected path-info, expected params)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static [(&'static str, &'static str)],
        );
        let table: &[Case] = &[
            // Exact routes match only themselves.
            ("/cart", "/cart", "", &[]),
            ("/cart/checkout", "/cart/checkout", "", &[]),
            // Exact beats the wildcard that also matches.
            ("/cart/other", "/cart/...", "/other", &[]),
            ("/cart/checkout/extra", "/cart/...", "/checkout/extra", &[]),
            // Longest wildcard prefix wins.
            ("/shop/books/rust", "/shop/books/...", "/rust", &[]),
            ("/shop/games", "/shop/...", "/games", &[]),
            // A trailing wildcard matches its own base too.
            ("/shop", "/shop/...", "", &[]),
            ("/shop/books", "/shop/books/...", "", &[]),
            // Parameters capture one segment; a literal beats a parameter.
            ("/users/42", "/users/:id", "", &[("id", "42")]),
            ("/users/admin", "/users/admin", "", &[]),
            (
                "/users/42/orders/7",
                "/users/:id/orders/...",
                "/7",
                &[("id", "42")],
            ),
            // A parameter never spans segments: falls to the catch-all.
            ("/users/42/profile", "/...", "/users/42/profile", &[]),
            // Literal segments beat parameters position by position.
            ("/v1/stock/abc", "/v1/stock/:sku", "", &[("sku", "abc")]),
            (
                "/v1/stock/abc/reservations",
                "/v1/stock/:sku/reservations",
                "",
                &[("sku", "abc")],
            ),
            (
                "/v1/orders/9",
                "/v1/:kind/:id",
                "",
                &[("kind", "orders"), ("id", "9")],
            ),
            // The catch-all takes everything else, including `/`.
            ("/", "/...", "", &[]),
            ("/nowhere/at/all", "/...", "/nowhere/at/all", &[]),
        ];
        for (path, route, info, params) in table {
            let m = router
                .route(path)
                .unwrap_or_else(|| panic!("{path} matched nothing"));
            assert_eq!(m.route, *route, "route for {path}");
            assert_eq!(m.path_info, *info, "path info for {path}");
            let want: BTreeMap<String, String> = params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(m.params, want, "params for {path}");
        }
    }

    #[test]
    fn no_match_without_catch_all() {
        let router = Router::new([("/cart".to_owned(), ()), ("/a/:b".to_owned(), ())])
            .expect("valid routes");
        assert!(router.route("/cart/x").is_none());
        assert!(router.route("/a").is_none());
        assert!(router.route("/a/b/c").is_none());
        assert!(router.route("/").is_none());
    }

    #[test]
    fn param_beats_trailing_wildcard() {
        let router =
            Router::new([("/a/...".to_owned(), 1), ("/a/:x".to_owned(), 2)]).expect("valid routes");
        assert_eq!(router.route("/a/b").map(|m| *m.target), Some(2));
        assert_eq!(router.route("/a/b/c").map(|m| *m.target), Some(1));
        assert_eq!(router.route("/a").map(|m| *m.target), Some(1));
    }

    #[test]
    fn the_root_route_is_exact_beside_a_catch_all() {
        let router =
            Router::new([("/...".to_owned(), 1), ("/".to_owned(), 2)]).expect("valid routes");
        assert_eq!(router.route("/").map(|m| *m.target), Some(2));
        assert_eq!(router.route("/x").map(|m| *m.target), Some(1));
        assert_eq!(router.route("/x/y").map(|m| *m.target), Some(1));
    }

    #[test]
    fn component_route_drops_wildcard() {
        let router = Router::new([("/api/...".to_owned(), ()), ("/...".to_owned(), ())])
            .expect("valid routes");
        assert_eq!(
            router.route("/api/x").map(|m| m.component_route),
            Some("/api".to_owned())
        );
        assert_eq!(
            router.route("/x").map(|m| m.component_route),
            Some(String::new())
        );
    }

    #[test]
    fn invalid_routes() {
        assert_eq!(
            Route::parse("cart"),
            Err(RouteError::NotAbsolute("cart".into()))
        );
        assert_eq!(
            Route::parse("/a/.../b"),
            Err(RouteError::WildcardNotLast("/a/.../b".into()))
        );
        assert_eq!(
            Route::parse("/a/:"),
            Err(RouteError::EmptyParam("/a/:".into()))
        );
        let dup = Router::new([("/a/:x".to_owned(), ()), ("/a/:y".to_owned(), ())]);
        assert!(matches!(dup, Err(RouteError::Duplicate(_, _))));
    }
}
