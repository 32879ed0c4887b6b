//! The demo's task: short movie reviews with a hidden preference, the miniature of "make GPT-2
//! write positive movie reviews". Everything here is a pure function of a seed.
//!
//! A review is an opening ("the film was", "i thought the acting was", …) and a continuation
//! built from a few templates with positive, negative and neutral words. The hidden rule that
//! stands in for human raters (`hidden_score`): the more positive review is preferred (positive
//! words minus negative words), and between equally positive ones the more fluent (no word
//! repeated, ends with a full stop). The policy never sees this rule; the reward model learns it
//! from preference pairs, and PPO learns it from the reward model.

use crate::rng::Rng;

pub const POSITIVE: [&str; 8] =
    ["great", "wonderful", "brilliant", "moving", "beautiful", "charming", "funny", "superb"];
pub const NEGATIVE: [&str; 8] = ["boring", "awful", "dull", "terrible", "weak", "messy", "bad", "tedious"];
pub const NEUTRAL: [&str; 8] = ["long", "quiet", "simple", "slow", "familiar", "loud", "short", "plain"];

/// Review openings: the prompts of the demo.
pub const OPENINGS: [&str; 10] = [
    "the film was",
    "the movie was",
    "i thought the acting was",
    "the story was",
    "honestly the music was",
    "overall the film was",
    "the ending felt",
    "the cast was",
    "to me the script was",
    "this movie is",
];

const SUBJECTS: [&str; 8] =
    ["the acting", "the story", "the music", "the ending", "the cast", "the script", "the camera work", "the dialogue"];

/// The other words the templates use.
const GLUE: [&str; 5] = ["was", "and", "but", "i", "found"];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u32) as usize]
}

/// An adjective whose sentiment follows `bias` (−1 … 1): positive more often when bias > 0.
fn adjective(rng: &mut Rng, bias: f64) -> &'static str {
    let u = rng.uniform() * 2.0 - 1.0 + bias;
    if u > 0.35 {
        pick(rng, &POSITIVE)
    } else if u < -0.35 {
        pick(rng, &NEGATIVE)
    } else {
        pick(rng, &NEUTRAL)
    }
}

/// A continuation of an opening: " wonderful. the music was dull and slow." and the like.
/// `sloppy` sometimes repeats a word or drops the final full stop (for the preference pairs).
pub fn continuation(rng: &mut Rng, bias: f64, sloppy: bool) -> String {
    let (a, b, c) = (adjective(rng, bias), adjective(rng, bias), adjective(rng, bias));
    let subject = pick(rng, &SUBJECTS);
    let mut text = match rng.below(6) {
        0 => format!(" {a}. {subject} was {b} and {c}."),
        1 => format!(" {a} and {b}, but {subject} was {c}."),
        2 => format!(" {a}. i found {subject} {b}."),
        3 => format!(" {a}, {b} and {c}."),
        4 => format!(" {a} and {b}."),
        _ => format!(" {a}."),
    };
    if sloppy && rng.uniform() < 0.3 {
        text = text.replacen(&format!(" {b}"), &format!(" {a}"), 1); // a repeated word
    }
    if sloppy && rng.uniform() < 0.3 {
        text.pop(); // no full stop at the end
    }
    if sloppy && rng.uniform() < 0.4 {
        let word = [a, b, c][rng.below(3) as usize];
        text = misspell(rng, &text, word);
    }
    text
}

/// `text` with one occurrence of `word` misspelt: a letter dropped or doubled, the word cut
/// short, or run into another one ("gronderful"-like garbage the raters dislike).
fn misspell(rng: &mut Rng, text: &str, word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    let i = 1 + rng.below(chars.len().max(2) as u32 - 1) as usize;
    let bad: String = match rng.below(4) {
        0 => chars.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c).collect(),
        1 => chars[..i].iter().chain(&chars[i - 1..]).collect(),
        2 => chars[..i.min(3)].iter().collect(), // cut short: "gr", "sup"
        _ => chars[..i].iter().collect::<String>() + &pick(rng, &POSITIVE)[1..],
    };
    text.replacen(word, &bad, 1)
}

/// The hidden rule's score of a continuation: (positive − negative words, fluency), compared
/// lexicographically; a word said twice counts once. Fluency counts three things: no adjective repeated, every word a real
/// one (misspelt words count as neither positive nor negative either), a final full stop.
pub fn hidden_score(text: &str) -> (i32, i32) {
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let mut distinct = words.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let sentiment = distinct.iter().map(|w| POSITIVE.contains(w) as i32 - NEGATIVE.contains(w) as i32).sum();
    let no_repeat = distinct.iter().all(|d| !is_rated(d) || words.iter().filter(|w| *w == d).count() == 1);
    let all_known = words.iter().all(|w| is_known(w));
    (sentiment, no_repeat as i32 + all_known as i32 + text.trim_end().ends_with('.') as i32)
}

/// Whether `word` is one the reviews are made of.
fn is_known(word: &str) -> bool {
    is_rated(word) || GLUE.contains(&word) || OPENINGS.iter().chain(&SUBJECTS).any(|p| p.split(' ').any(|w| w == word))
}

/// Words whose repetition the raters mind (the adjectives; "the" and "was" may repeat).
fn is_rated(word: &str) -> bool {
    POSITIVE.contains(&word) || NEGATIVE.contains(&word) || NEUTRAL.contains(&word)
}

/// The SFT corpus: `n` reviews of mixed sentiment (`{"text"}` lines), fluent.
pub fn corpus(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let bias = rng.uniform() * 1.2 - 0.6;
            format!("{}{}", pick(&mut rng, &OPENINGS), continuation(&mut rng, bias, false))
        })
        .collect()
}

/// One preference pair: a prompt and two continuations, the hidden rule's favourite first.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// `n` preference pairs labelled by the hidden rule (pairs it cannot rank are not drawn).
pub fn preference_pairs(seed: u64, n: usize) -> Vec<PreferencePair> {
    let mut rng = Rng::new(seed);
    let mut pairs = Vec::with_capacity(n);
    while pairs.len() < n {
        let prompt = pick(&mut rng, &OPENINGS).to_string();
        let (b1, b2) = (rng.uniform() * 2.0 - 1.0, rng.uniform() * 2.0 - 1.0);
        let (x, y) = (continuation(&mut rng, b1, true), continuation(&mut rng, b2, true));
        let (sx, sy) = (hidden_score(&x), hidden_score(&y));
        if sx != sy {
            let (chosen, rejected) = if sx > sy { (x, y) } else { (y, x) };
            pairs.push(PreferencePair { prompt, chosen, rejected });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hidden_rule_prefers_positive_then_fluent() {
        assert!(hidden_score(" wonderful and great.") > hidden_score(" dull and great."));
        assert!(hidden_score(" great and quiet.") > hidden_score(" great and great."));
        assert!(hidden_score(" great and quiet.") > hidden_score(" great and quiet"));
        assert_eq!(hidden_score(" the story was the story."), (0, 3), "only adjectives count as repeats");
        assert!(hidden_score(" great and quiet.") > hidden_score(" gronderful and quiet."));
        assert_eq!(hidden_score(" gronderful and quiet.").0, 0, "a misspelt word carries no sentiment");
    }

    #[test]
    fn the_data_is_a_function_of_the_seed() {
        assert_eq!(corpus(1, 50), corpus(1, 50));
        assert_ne!(corpus(1, 50), corpus(2, 50));
        let pairs = preference_pairs(3, 200);
        assert_eq!(pairs, preference_pairs(3, 200));
        assert!(pairs.iter().all(|p| hidden_score(&p.chosen) > hidden_score(&p.rejected)));
        let texts = corpus(4, 400);
        let positive = texts.iter().filter(|t| hidden_score(t).0 > 0).count();
        let negative = texts.iter().filter(|t| hidden_score(t).0 < 0).count();
        assert!(positive > 80 && negative > 80, "mixed sentiment: {positive} positive, {negative} negative of 400");
    }
}
