//! Text a plugin chose (ids, messages, descriptions, counter names) made safe to print: no
//! control characters reach a terminal or a log, and nothing is longer than the caller allows.

/// `text` with control and bidirectional-override characters escaped as `\u{..}`, cut to
/// `max_chars` characters (an ellipsis marks the cut).
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    for (kept, c) in text.chars().enumerate() {
        if kept == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(printable("plain id-1", 100), "plain id-1");
        assert_eq!(printable("red\x1b[31mtext\n", 100), "red\\u{1b}[31mtext\\u{a}");
        assert_eq!(printable("a\u{202E}b\u{9b}", 100), "a\\u{202e}b\\u{9b}");
        assert_eq!(printable(&"x".repeat(65_536), 8), "xxxxxxxx…");
        assert_eq!(printable("", 8), "");
    }
}
