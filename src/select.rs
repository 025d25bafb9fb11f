//! Which nodes a cluster may use: `--nodes` patterns over IPs, peer ids and names.

/// A pattern a node must match: a glob (`*` any run, `?` one character) tested against
/// the node's IP address, its peer id and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePattern(String);

impl NodePattern {
    /// A pattern from its text.
    pub fn new(text: impl Into<String>) -> Self {
        NodePattern(text.into())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a node with these facts matches.
    ///
    /// # Examples
    /// ```
    /// use dispy::NodePattern;
    /// assert!(NodePattern::new("10.77.0.*").matches(Some("10.77.0.3"), "12D3Koo", "n3"));
    /// assert!(NodePattern::new("n?").matches(None, "12D3Koo", "n3"));
    /// assert!(!NodePattern::new("10.77.1.*").matches(Some("10.77.0.3"), "12D3Koo", "n3"));
    /// ```
    pub fn matches(&self, ip: Option<&str>, peer_id: &str, name: &str) -> bool {
        ip.is_some_and(|ip| glob(&self.0, ip)) || glob(&self.0, peer_id) || glob(&self.0, name)
    }
}

/// Matches `text` against a glob with `*` and `?`.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one backtrack point for the last `*`: linear in practice.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("10.77.0.*", "10.77.0.12"));
        assert!(!glob("10.77.0.*", "10.77.1.12"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("n?", "n1"));
        assert!(!glob("n?", "n12"));
        assert!(glob("node-1", "node-1"));
    }
}
