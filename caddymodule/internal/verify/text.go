package verify

import (
	"strings"
	"unicode/utf8"
)

// HeaderValue reports whether v may be sent as a header value: 1 to max
// bytes of UTF-8 with no control character (C0, DEL, C1) and no line or
// paragraph separator.
func HeaderValue(v string, max int) bool {
	if len(v) == 0 || len(v) > max || !utf8.ValidString(v) {
		return false
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}

// maxLanguageTag bounds the language of an encoded value (RFC 5646 tags
// are at most 35 characters in practice).
const maxLanguageTag = 35

// DecodeText reads a client's text header (an external id, an email) in
// either of its two forms:
//
//   - the value itself, as UTF-8 (what native SDKs send);
//   - the RFC 8187 ext-value form UTF-8'[language]'<percent-encoded UTF-8>,
//     e.g. utf-8”zo%C3%AB for "zoë": what a browser must send, since
//     fetch() refuses header values above U+00FF and sends the rest as
//     Latin-1. The charset is case-insensitive and must be UTF-8; the
//     language is ignored; any visible ASCII other than '%' may stand for
//     itself (so JavaScript's encodeURIComponent output is accepted).
//
// A value that starts with UTF-8' is always the encoded form. It returns
// the decoded text, which must satisfy HeaderValue(max); ok is false for a
// malformed encoding or text that does not.
func DecodeText(v string, max int) (text string, ok bool) {
	rest, encoded := cutPrefixFold(v, "utf-8'")
	if !encoded {
		return v, HeaderValue(v, max)
	}
	lang, value, found := strings.Cut(rest, "'")
	if !found || len(lang) > maxLanguageTag || len(value) > 3*max {
		return "", false
	}
	for i := 0; i < len(lang); i++ {
		if c := lang[i]; !(c == '-' || '0' <= c && c <= '9' || 'a' <= c|0x20 && c|0x20 <= 'z') {
			return "", false
		}
	}
	b := make([]byte, 0, len(value))
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case c == '%':
			if i+2 >= len(value) {
				return "", false
			}
			hi, ok1 := unhex(value[i+1])
			lo, ok2 := unhex(value[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			b = append(b, hi<<4|lo)
			i += 2
		case c > 0x20 && c < 0x7f:
			b = append(b, c)
		default:
			return "", false
		}
	}
	text = string(b)
	return text, HeaderValue(text, max)
}

// EncodeText is the ext-value form of s (see DecodeText) when s needs it:
// when it holds a byte outside visible ASCII or would itself read as an
// encoded value; otherwise s. Every byte but RFC 8187's attr-char is
// percent-encoded.
func EncodeText(s string) string {
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			plain = false
			break
		}
	}
	if _, encoded := cutPrefixFold(s, "utf-8'"); plain && !encoded {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.WriteString("utf-8''")
	for i := 0; i < len(s); i++ {
		c := s[i]
		if attrChar(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// attrChar is RFC 8187's attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" /
// "+" / "-" / "." / "^" / "_" / "`" / "|" / "~".
func attrChar(c byte) bool {
	switch {
	case '0' <= c && c <= '9', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}
