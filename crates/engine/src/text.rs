//! From generated token ids to the text a client sees: only complete UTF-8 characters, never
//! a stop string or the start of one that may still complete.

/// What to emit after the generated text became `text`, given `emitted` bytes of it sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    pub text: &'a str,
    /// A stop string matched: the request ends, the stop string and what follows unsent.
    pub stopped: bool,
}

/// The next delta of `text`. A trailing U+FFFD may be a character still arriving (a byte-level
/// token is part of one), so it is held back unless `last` (the request ends here anyway).
pub fn delta<'a>(text: &'a str, emitted: usize, stops: &[String], last: bool) -> Delta<'a> {
    let complete = if last {
        text
    } else {
        text.trim_end_matches('\u{FFFD}')
    };
    // The earliest match of any stop string. What was sent held back every prefix of a stop
    // string, so a match cannot lie wholly in the sent part.
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| complete.find(s.as_str()))
        .min();
    if let Some(at) = hit {
        return Delta {
            text: complete.get(emitted..at).unwrap_or(""),
            stopped: true,
        };
    }
    let mut end = complete.len();
    if !last {
        // Hold back the longest tail that begins some stop string.
        let hold = stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&k| complete.as_bytes().ends_with(&s.as_bytes()[..k]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        end -= hold;
        while !complete.is_char_boundary(end) {
            end -= 1;
        }
    }
    Delta {
        text: complete.get(emitted..end).unwrap_or(""),
        stopped: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_stop_string_is_cut_and_its_prefix_held_back() {
        let st = stops(&["\n\n", "END"]);
        assert_eq!(delta("hello E", 0, &st, false).text, "hello ");
        assert_eq!(delta("hello EN", 6, &st, false).text, "");
        let d = delta("hello END more", 6, &st, false);
        assert_eq!(
            d,
            Delta {
                text: "",
                stopped: true
            }
        );
        let d = delta("a\n\nb", 0, &st, false);
        assert_eq!(
            d,
            Delta {
                text: "a",
                stopped: true
            }
        );
        // The end of the request flushes a held-back prefix.
        assert_eq!(delta("hello EN", 6, &st, true).text, "EN");
    }

    #[test]
    fn a_character_still_arriving_waits() {
        assert_eq!(delta("ab\u{FFFD}", 0, &[], false).text, "ab");
        assert_eq!(delta("ab\u{FFFD}", 2, &[], true).text, "\u{FFFD}");
        // A stop string that begins with a multi-byte character: hold back on a boundary.
        let st = stops(&["é!"]);
        assert_eq!(delta("caé", 0, &st, false).text, "ca");
        assert_eq!(delta("caé!", 0, &st, false).text, "ca");
    }
}
