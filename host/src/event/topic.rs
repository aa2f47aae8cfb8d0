//! Topics and the patterns that subscribe to them, as NATS subjects have them: dot-separated
//! tokens (`user.created`); in a pattern `*` stands for exactly one token and `>`, last only,
//! for one or more (`user.*` matches `user.created`, `user.>` also `user.profile.changed`).
//!
//! The one home of these rules: the loader checks a plugin's declarations with them, the bus
//! checks every publish and matches every subscription with them.

#![forbid(unsafe_code)]

/// The longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// The prefix of the host's own events; plugins may subscribe to it but not publish under it.
pub const HOST_PREFIX: &str = "plughost.";

/// Why `topic` is not a topic a plugin or program may publish, if it is not.
pub fn check_topic(topic: &str) -> Result<(), String> {
    check_tokens(topic, false)
}

/// Why `pattern` is not a subscription pattern, if it is not.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    check_tokens(pattern, true)
}

fn check_tokens(text: &str, pattern: bool) -> Result<(), String> {
    let what = if pattern { "pattern" } else { "topic" };
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "the {what} is {} bytes long; at most {MAX_TOPIC_LEN}",
            text.len()
        ));
    }
    let tokens: Vec<&str> = text.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "{what} {text:?} has an empty token (two dots, or a dot at an end)"
            ));
        }
        match *token {
            "*" if pattern => {}
            ">" if pattern && i == tokens.len() - 1 => {}
            ">" if pattern => {
                return Err(format!(
                    "pattern {text:?} has `>` before its last token (`>` matches the rest, so \
                     it must end the pattern)"
                ))
            }
            "*" | ">" => {
                return Err(format!(
                    "topic {text:?} has a wildcard (`{token}`); wildcards belong in \
                     subscription patterns"
                ))
            }
            _ => {
                if let Some(bad) = token
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
                {
                    return Err(format!(
                        "{what} {text:?} has {bad:?}; tokens are letters, digits, `_` and `-`"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether `topic` (a checked topic) matches `pattern` (a checked pattern).
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for token in pattern.split('.') {
        match token {
            ">" => return topic_tokens.next().is_some(),
            "*" => {
                if topic_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_nats_subjects_do() {
        assert!(matches("user.*", "user.created"));
        assert!(!matches("user.*", "user.profile.changed"));
        assert!(!matches("user.*", "user"));
        assert!(matches("user.>", "user.profile.changed"));
        assert!(matches("user.>", "user.created"));
        assert!(!matches("user.>", "user"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("*.created", "order.created"));
        assert!(matches("user.created", "user.created"));
        assert!(!matches("user.created", "user.created.twice"));
        assert!(!matches("user.created.twice", "user.created"));
    }

    #[test]
    fn malformed_topics_and_patterns_are_refused_with_the_reason() {
        assert!(check_topic("user.created").is_ok());
        assert!(check_topic("a-b_c.9").is_ok());
        assert!(check_topic("bad..topic")
            .unwrap_err()
            .contains("empty token"));
        assert!(check_topic(".x").unwrap_err().contains("empty token"));
        assert!(check_topic("").unwrap_err().contains("empty"));
        assert!(check_topic("user.*").unwrap_err().contains("wildcard"));
        assert!(check_topic("user created").unwrap_err().contains("' '"));
        assert!(check_topic(&"a".repeat(300))
            .unwrap_err()
            .contains("at most"));
        assert!(check_pattern("user.>").is_ok());
        assert!(check_pattern("*.x.*").is_ok());
        assert!(check_pattern("user.>.x")
            .unwrap_err()
            .contains("before its last"));
        assert!(check_pattern("us*er").unwrap_err().contains("'*'"));
    }
}
