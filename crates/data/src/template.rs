//! Chat and instruction templates as data: a conversation rendered to text segments, each
//! trained or not, and completion masking by searching for marker tokens in the ids (the way
//! TRL's `DataCollatorForCompletionOnlyLM` masks raw text).
//!
//! Presets:
//! - `human-assistant`: the research notebook's format, `\n\n### Human: …\n\n### Assistant:`
//!   with the model's BOS right after each assistant marker and its EOS after each answer
//!   (`…### Assistant:<s> perro</s>`); an answer and its EOS are trained.
//! - `chatml`: `<|im_start|>role\n…<|im_end|>\n`; an assistant's text and its `<|im_end|>`
//!   are trained.

use crate::alpaca::{Segment, Turn};

/// The research notebook's human marker.
pub const HUMAN: &str = "\n\n### Human:";
/// The research notebook's assistant marker.
pub const ASSISTANT: &str = "### Assistant:";

/// The research notebook's preprocessing of a raw `text` record (`"\n\n### Human: …\n\n###
/// Assistant: …"`): EOS before every human marker, BOS after every assistant marker, EOS at
/// the end, and the EOS this puts in front of the first human marker removed.
#[must_use]
pub fn notebook_text(raw: &str, bos: &str, eos: &str) -> String {
    let text = raw
        .replace(HUMAN, &format!("{eos}{HUMAN}"))
        .replace(ASSISTANT, &format!("{ASSISTANT}{bos}"));
    let text = format!("{text}{eos}");
    match text.strip_prefix(eos) {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// The `human-assistant` segments of a conversation (turns alternate human, assistant):
/// byte for byte what [`notebook_text`] makes of the same conversation written as raw text.
#[must_use]
pub fn human_assistant(turns: &[Turn], bos: &str, eos: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for t in turns {
        if t.role == "assistant" {
            // The marker and BOS end the untrained prompt; the answer and EOS are trained.
            push(&mut out, &format!("\n\n{ASSISTANT}{bos}"), false);
            push(&mut out, &format!(" {}{eos}", t.content), true);
        } else {
            push(&mut out, &format!("{HUMAN} {}", t.content), false);
        }
    }
    out
}

/// The `chatml` segments of a conversation: `human` is written as `user`, other roles as
/// they are.
#[must_use]
pub fn chatml(turns: &[Turn]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for t in turns {
        let role = if t.role == "human" { "user" } else { &t.role };
        push(&mut out, &format!("<|im_start|>{role}\n"), false);
        if t.role == "assistant" {
            push(&mut out, &format!("{}<|im_end|>", t.content), true);
            push(&mut out, "\n", false);
        } else {
            push(&mut out, &format!("{}<|im_end|>\n", t.content), false);
        }
    }
    out
}

/// Appends `text` (nothing when empty), merged into the last segment when that one is
/// trained alike.
pub(crate) fn push(out: &mut Vec<Segment>, text: &str, trained: bool) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.trained == trained => last.text.push_str(text),
        _ => out.push(Segment {
            text: text.to_owned(),
            trained,
        }),
    }
}

/// Why marker-search masking failed for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerMissing {
    /// The response marker's ids do not occur.
    Response,
}

/// Completion labels by marker search in token ids, as `DataCollatorForCompletionOnlyLM`:
/// every token after a `response` marker is trained up to the next `instruction` marker
/// (which is masked, and the text after it up to the next response marker); everything
/// before the first response marker is masked. Without `instruction`, training runs from
/// the first response marker to the end.
///
/// # Errors
/// [`MarkerMissing::Response`] when the response marker does not occur.
pub fn mask_by_markers(
    ids: &[u32],
    response: &[u32],
    instruction: Option<&[u32]>,
) -> Result<Vec<i32>, MarkerMissing> {
    let find_all = |pat: &[u32]| -> Vec<usize> {
        if pat.is_empty() || pat.len() > ids.len() {
            return Vec::new();
        }
        (0..=ids.len() - pat.len())
            .filter(|&i| ids[i..i + pat.len()] == *pat)
            .collect()
    };
    let responses = find_all(response);
    if responses.is_empty() {
        return Err(MarkerMissing::Response);
    }
    let instructions = instruction.map(&find_all).unwrap_or_default();
    let mut trained = vec![false; ids.len()];
    for &r in &responses {
        let start = r + response.len();
        let end = instructions
            .iter()
            .copied()
            .find(|&i| i >= start)
            .unwrap_or(ids.len());
        if instruction.is_none() {
            trained[start..].iter_mut().for_each(|t| *t = true);
            break;
        }
        trained[start..end].iter_mut().for_each(|t| *t = true);
    }
    Ok(ids
        .iter()
        .zip(trained)
        .map(|(&id, on)| {
            if on {
                i32::try_from(id).unwrap_or(i32::MAX)
            } else {
                -100
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(pairs: &[(&str, &str)]) -> Vec<Turn> {
        pairs
            .iter()
            .map(|(role, content)| Turn {
                role: (*role).into(),
                content: (*content).into(),
            })
            .collect()
    }

    fn joined(segments: &[Segment]) -> String {
        segments.iter().map(|s| s.text.as_str()).collect()
    }

    fn trained(segments: &[Segment]) -> Vec<&str> {
        segments
            .iter()
            .filter(|s| s.trained)
            .map(|s| s.text.as_str())
            .collect()
    }

    #[test]
    fn the_notebooks_string_and_its_trained_part() {
        let raw = "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant: perro";
        let want =
            "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant:<s> perro</s>";
        assert_eq!(notebook_text(raw, "<s>", "</s>"), want);
        let conversation = turns(&[
            ("human", "How do you say \"dog\" in Spanish?"),
            ("assistant", "perro"),
        ]);
        let segments = human_assistant(&conversation, "<s>", "</s>");
        assert_eq!(joined(&segments), want);
        assert_eq!(trained(&segments), [" perro</s>"]);
        // GPT-2 tokenizers: <|endoftext|> for both.
        let e = "<|endoftext|>";
        assert_eq!(
            joined(&human_assistant(&conversation, e, e)),
            notebook_text(raw, e, e)
        );
        assert!(
            notebook_text(raw, e, e).ends_with("### Assistant:<|endoftext|> perro<|endoftext|>")
        );
    }

    #[test]
    fn multi_turn_human_assistant_equals_the_notebooks_preprocessing() {
        let raw =
            "\n\n### Human: one?\n\n### Assistant: uno\n\n### Human: two?\n\n### Assistant: dos";
        let conversation = turns(&[
            ("human", "one?"),
            ("assistant", "uno"),
            ("human", "two?"),
            ("assistant", "dos"),
        ]);
        let segments = human_assistant(&conversation, "<s>", "</s>");
        assert_eq!(joined(&segments), notebook_text(raw, "<s>", "</s>"));
        assert_eq!(trained(&segments), [" uno</s>", " dos</s>"]);
    }

    #[test]
    fn chatml_trains_the_assistants_text_and_end_marker() {
        let conversation = turns(&[
            ("system", "Be brief."),
            ("human", "Hi"),
            ("assistant", "Hello"),
        ]);
        let segments = chatml(&conversation);
        assert_eq!(
            joined(&segments),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        );
        assert_eq!(trained(&segments), ["Hello<|im_end|>"]);
    }

    #[test]
    fn marker_search_trains_between_response_and_instruction_markers() {
        // 7 = response marker, 8 9 = instruction marker.
        let ids = [8, 9, 1, 2, 7, 3, 4, 8, 9, 5, 7, 6];
        let labels = mask_by_markers(&ids, &[7], Some(&[8, 9])).expect("found");
        assert_eq!(
            labels,
            [
                -100, -100, -100, -100, -100, 3, 4, -100, -100, -100, -100, 6
            ]
        );
        let open = mask_by_markers(&ids, &[7], None).expect("found");
        assert_eq!(open, [-100, -100, -100, -100, -100, 3, 4, 8, 9, 5, 7, 6]);
        assert_eq!(
            mask_by_markers(&ids, &[42], None),
            Err(MarkerMissing::Response)
        );
    }
}
