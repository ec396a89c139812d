//! "Did you mean …?" for names a person types: presets, hardware, dtypes.

/// Levenshtein distance over chars, case-insensitive.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if any is close enough to be a plausible typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            // A candidate that contains what was typed (or the reverse) is a strong hint.
            let cl = c.to_lowercase();
            let contains = !lower.is_empty() && (cl.contains(&lower) || lower.contains(&cl));
            let d = if contains { 0 } else { edit_distance(name, c) };
            (d, c)
        })
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 2).max(2))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("GPT2", "gpt2"), 0);
    }

    #[test]
    fn nearest_finds_typos_and_rejects_nonsense() {
        let names = ["small", "medium", "large", "xl", "gpt2-124m"];
        assert_eq!(nearest("smal", names), Some("small"));
        assert_eq!(nearest("meduim", names), Some("medium"));
        assert_eq!(nearest("gpt2", names), Some("gpt2-124m"));
        assert_eq!(nearest("zzzzzzzzzzzz", names), None);
    }
}
