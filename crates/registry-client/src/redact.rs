//! Keeping passwords written into URLs (`https://user:secret@host`) out of messages.

/// `text` with the password of every URL's userinfo replaced by `***`
/// (`https://user:secret@host/` → `https://user:***@host/`). Works on any text that holds
/// URLs (messages, configuration values), valid URLs or not.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:hunter2@127.0.0.1:1/"),
            "https://u:***@127.0.0.1:1/"
        );
        assert_eq!(
            redact_url("upstream url \"https://u:p@a:b@h\": bad, see http://x:y@z?q"),
            "upstream url \"https://u:***@h\": bad, see http://x:***@z?q"
        );
        assert_eq!(redact_url("https://user@host/x"), "https://user@host/x");
        assert_eq!(redact_url("no url here"), "no url here");
        assert_eq!(redact_url("https://h/p@q:r"), "https://h/p@q:r");
    }
}
