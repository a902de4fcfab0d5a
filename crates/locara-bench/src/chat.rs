//! The chat scenario of the serve benchmark (`--only chat8`): one
//! conversation of [`TURNS`] user turns in which every request sends the
//! whole history, as a chat app does, timed turn by turn.
//!
//! The assistant's part of the history is written here too
//! ([`ASSISTANT_ANSWERS`]), not taken from what each server answered: the two
//! servers run at their own defaults (K/V types differ), so their greedy
//! answers may differ, and a history built from them would give the two
//! sides prompts of different lengths from the second turn on. With fixed
//! answers both sides see the same messages every turn, and a request asks
//! for only [`MAX_TOKENS`]: the figure measured is the time to the first
//! one. A server that reuses its cache across turns still holds the prompt
//! of the turn before (everything up to the answer it generated), so each
//! turn it has to prefill the fixed answer and the new user message: about
//! 230 new tokens a turn, where a chat app that sends back the server's own
//! answer would need about 130.
//!
//! ```
//! use locara_bench::chat::{messages, TURNS};
//!
//! let last = messages(1, TURNS - 1);
//! // The system prompt, then 8 user messages and 7 answers between them.
//! assert_eq!(last.as_array().unwrap().len(), 1 + 2 * TURNS - 1);
//! ```

use serde_json::{json, Value};

/// User turns of one conversation (the issue's "8-turn conversation").
pub const TURNS: usize = 8;

/// `max_tokens` of every turn: enough to see the first token and a short
/// answer start, few enough that the turns are about time to first token
/// (32 tokens of a 135M model decode in well under a second on 2 cores).
pub const MAX_TOKENS: u32 = 32;

/// The system prompt after the conversation's own first words (see
/// [`system_prompt`]).
pub const SYSTEM_PROMPT: &str =
    "You are a friendly gardening assistant. The user grows vegetables \
and herbs in containers on a small city balcony. Give practical, specific advice in plain \
language, and keep each answer short.";

/// The user's messages, about 130 tokens each (about 100 English words).
pub const USER_TURNS: [&str; TURNS] = [
    "Hi! I just moved into a flat with a balcony of about two by four metres. It faces \
     south-west, gets direct sun from around noon until seven in the evening, and it can be \
     quite windy because we are on the sixth floor. Summers here are warm, usually 25 to 30 \
     degrees, with the odd heatwave, and the last frost is normally in mid April. I would love \
     to grow some of my own food this year: tomatoes, peppers, salad leaves and a few herbs for \
     cooking. I have never grown anything except a cactus. Where should I start, and what \
     should I buy first?",
    "That sounds manageable. About the containers: I have seen everything from cheap plastic \
     tubs to fabric grow bags and big glazed ceramic pots. How large do they need to be for \
     tomatoes and peppers, and is there a difference between those materials on a hot \
     balcony? Also, my neighbour told me to just fill them with soil from the park across the \
     road because potting mix is expensive. Is that a good idea, or will it cause problems \
     later? And do I really need to put stones or broken pottery at the bottom for drainage, \
     like my grandmother always did?",
    "Great, I will get two fabric bags for the tomatoes and plastic pots for the rest. \
     Watering is my biggest worry. I work from home during the week, but most weekends I visit \
     my parents and leave on Friday afternoon and come back Sunday night. In July it can be 32 \
     degrees on the balcony in the afternoon. Will the plants survive two days without water? \
     I have read about self-watering pots, wicking systems made with a bucket and some rope, \
     and small drip kits with a timer connected to a tap. I do have an outdoor tap on the \
     balcony. Which of these would you recommend?",
    "Thanks, I ordered a drip kit and a timer. Now the fun part: tomatoes. The garden centre \
     has so many varieties that I got lost. Some labels say determinate or bush, others say \
     indeterminate or cordon, and some are cherry tomatoes while others are big beefsteak \
     types. Which kinds do best in containers on a windy balcony? I also saw videos of people \
     pinching out little shoots between the stem and the leaves, and others saying you should \
     never do that. Do I need to prune, and how tall will they get? I would prefer something \
     sweet for salads.",
    "It is now the middle of June and things were going well until this week. The undersides \
     of the pepper leaves are covered in tiny green insects, and some new leaves look curled \
     and sticky. I also noticed a few ants walking up and down the stems. I think they are \
     aphids. I do not want to use strong chemicals because I eat these plants and I sometimes \
     have my niece over to help. I have read about spraying with soapy water, neem oil, and \
     buying ladybird larvae online. What actually works, and how often do I need to do it \
     before they are gone?",
    "The aphids are mostly gone, thank you. Next question is about herbs. I planted basil, \
     mint, parsley and thyme together in one long trough because it looked nice. The mint is \
     now taking over the whole thing, the basil has started to grow tall with flowers at the \
     top and the leaves taste a bit bitter, and the thyme looks grey and unhappy. The parsley \
     is fine. Did I do something wrong by putting them together? I also read that basil \
     should be planted next to tomatoes to keep pests away. Is that true or just garden \
     folklore?",
    "Moving the mint was a good call. Now some of the lower tomato leaves are turning yellow, \
     starting at the edges, and the newest pepper leaves are pale. The plants are flowering \
     but only a few fruits have set so far. I have not fed them at all since planting in April \
     because the potting mix bag said it contained nutrients for six weeks. At the garden \
     centre there are slow release granules, liquid tomato feed, seaweed extract, and organic \
     chicken manure pellets. What should I use now, how often, and can I overfeed them? I want \
     fruit rather than a jungle of leaves.",
    "The harvest has been amazing, we had tomatoes almost every day in August. Now it is the \
     end of September, nights are getting colder and the plants look tired. What should I do \
     with everything at the end of the season? Can I keep the peppers alive indoors over \
     winter, can I reuse the potting mix next year, and what should I do with the fabric bags \
     and the drip system? Finally, could you give me a short checklist of what to do \
     differently next year, based on everything we talked about, so I can stick it inside a \
     kitchen cupboard?",
];

/// The assistant's answers to all but the last user turn, about 100 tokens
/// each: the history every later turn sends back.
pub const ASSISTANT_ANSWERS: [&str; TURNS - 1] = [
    "Welcome to balcony growing! Your spot is promising: six or seven hours of afternoon sun \
     suits tomatoes and peppers well. Start with the basics: four or five large containers, a \
     bag of good peat-free potting mix, a watering can, and some canes or a small trellis. \
     Because of the wind, choose heavy pots and put the tallest plants against the wall. Buy \
     young plants from a nursery in late April rather than starting from seed this first year.",
    "For tomatoes use at least 20 litres per plant, for peppers about 10 to 15. Fabric bags \
     breathe and stay cool but dry out fast; glazed ceramic holds water but gets heavy; \
     plastic is fine if it is light in colour. Skip the park soil: it compacts in pots, drains \
     badly and can bring weeds, pests and diseases. Stones at the bottom actually raise the \
     wet layer, so leave them out and just make sure there are holes.",
    "Two hot days without water is too long for tomatoes in fabric bags, so plan for it. Since \
     you have a tap, a battery timer with a small drip kit is the most reliable choice: one or \
     two drippers per pot, running for a few minutes early each morning. Test it for a week \
     before you leave and check that no dripper is blocked. Mulching the surface with straw or \
     bark also slows drying considerably.",
    "For a windy balcony, cherry tomatoes are the safest choice: they ripen quickly and cope \
     with containers. A bush variety such as Tumbling Tom needs no pruning and stays under \
     half a metre. A cordon variety like Sungold is sweeter and more productive but grows to \
     two metres, so tie it to a strong cane and pinch out the side shoots weekly. Beefsteak \
     types need a long, sheltered season and usually disappoint in pots.",
    "Those are almost certainly aphids, and the ants farm them for their sticky honeydew. \
     Start by squashing them or washing them off with a strong jet of water every two days. \
     If that is not enough, spray an insecticidal soap in the evening, covering the undersides \
     of the leaves, and repeat weekly for three weeks. Ladybird larvae work well on a \
     sheltered balcony but may wander off in the wind. Neem also helps, but keep it away from \
     flowers.",
    "Mixing them was the problem: mint spreads by runners and always wins, so give it a pot of \
     its own. Thyme wants a dry, gritty mix and hates the wet soil that basil and parsley \
     enjoy, so move it too. Pinch basil tips above a pair of leaves every week and remove \
     flower buds as soon as they appear; that keeps it leafy and sweet. Basil next to \
     tomatoes is pleasant, but the pest benefit is weak.",
    "Your plants are hungry: the compost's nutrients ran out weeks ago. Use a liquid tomato \
     feed, which is high in potassium, for both tomatoes and peppers, once a week at the \
     strength on the label, always on moist soil. Overfeeding with nitrogen gives lush leaves \
     and few fruits, so avoid extra manure pellets now. Shake the flowering trusses gently on \
     calm days to help pollination, and expect the yellow lower leaves to stay yellow; simply \
     remove them.",
];

/// The system prompt of conversation number `conversation`. Its first
/// words differ from every other conversation's, so that no cache a
/// server kept from an earlier conversation (a slot's K/V, llama-server's
/// prompt cache in RAM, a reused system prompt) matches more than the
/// template's first few tokens: each rep measures a conversation that
/// starts cold, as a new chat does, and only reuse within it can help.
pub fn system_prompt(conversation: u32) -> String {
    format!("Session {conversation}. {SYSTEM_PROMPT}")
}

/// The messages of turn `turn` (0-based, below [`TURNS`]) of conversation
/// `conversation`: the system prompt, then every user message up to this
/// turn's with the fixed answers between them.
pub fn messages(conversation: u32, turn: usize) -> Value {
    assert!(turn < TURNS, "turn {turn} is past the last of {TURNS}");
    let mut messages = vec![json!({"role": "system", "content": system_prompt(conversation)})];
    for (t, user) in USER_TURNS.iter().enumerate().take(turn + 1) {
        messages.push(json!({"role": "user", "content": user}));
        if t < turn {
            messages.push(json!({"role": "assistant", "content": ASSISTANT_ANSWERS[t]}));
        }
    }
    Value::Array(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn each_turn_sends_the_whole_history_and_ends_with_the_new_message() {
        for turn in 0..TURNS {
            let m = messages(7, turn);
            let m = m.as_array().unwrap();
            assert_eq!(m.len(), 2 + 2 * turn, "turn {turn}");
            assert_eq!(m[0]["role"], "system");
            assert_eq!(m[0]["content"], system_prompt(7));
            let last = m.last().unwrap();
            assert_eq!(last["role"], "user");
            assert_eq!(last["content"], USER_TURNS[turn]);
            // Roles alternate after the system prompt, user first.
            for (i, msg) in m[1..].iter().enumerate() {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                assert_eq!(msg["role"], role, "turn {turn}, message {i}");
            }
            if turn > 0 {
                // The turn before is a prefix of this one: a server may reuse it.
                let before = messages(7, turn - 1);
                assert_eq!(before.as_array().unwrap()[..], m[..m.len() - 2]);
                assert_eq!(m[m.len() - 2]["content"], ASSISTANT_ANSWERS[turn - 1]);
            }
        }
    }

    #[test]
    fn conversations_differ_from_their_first_words() {
        let (a, b) = (system_prompt(1), system_prompt(2));
        assert_ne!(a, b);
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        assert_eq!(common, "Session ".len(), "{a:?} / {b:?}");
        assert!(a.ends_with(SYSTEM_PROMPT));
    }

    #[test]
    fn turns_are_about_130_tokens_and_answers_about_100() {
        // English prose runs at about 1.3 tokens a word in SmolLM2's and
        // Gemma 3's tokenizers; the benchmark reports the exact counts.
        for (i, text) in USER_TURNS.iter().enumerate() {
            assert!(
                (90..=115).contains(&words(text)),
                "user turn {i}: {}",
                words(text)
            );
        }
        for (i, text) in ASSISTANT_ANSWERS.iter().enumerate() {
            assert!(
                (65..=85).contains(&words(text)),
                "answer {i}: {}",
                words(text)
            );
        }
        // No doubled spaces from the string continuations.
        for text in USER_TURNS.iter().chain(&ASSISTANT_ANSWERS) {
            assert!(!text.contains("  "), "{text}");
        }
    }

    #[test]
    #[should_panic(expected = "turn 8 is past the last of 8")]
    fn there_is_no_ninth_turn() {
        messages(1, TURNS);
    }
}
