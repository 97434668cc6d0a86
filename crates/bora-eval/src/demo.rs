//! The bundled demo task: order sentences to JSON. A user writes one short sentence about an
//! order in one of several phrasings; the answer is a JSON object with fixed keys. The base
//! model does not know the keys (it answers in prose or invents its own), while a LoRA learns
//! the mapping in a few hundred examples, because every answer is short and copied from the
//! prompt.

use bora_data::SplitMix64;
use serde_json::json;

const NAMES: &[&str] = &[
    "Maria", "John", "Aiko", "Lars", "Fatima", "Pedro", "Chen", "Olga", "Kwame", "Ines", "Ravi",
    "Sofia", "Tomas", "Lena", "Omar", "Yuki", "Hugo", "Nadia", "Ivan", "Zoe",
];
const ITEMS: &[&str] = &[
    "lamp", "chair", "kettle", "book", "mug", "desk", "clock", "towel", "pillow", "plate",
    "candle", "basket",
];
const CITIES: &[&str] = &[
    "Lyon", "Oslo", "Lima", "Pune", "Kyoto", "Porto", "Dakar", "Quito", "Perth", "Bergen", "Graz",
    "Tunis",
];

/// Phrasings of one order; `{n}` name, `{q}` quantity, `{i}` item (plural), `{c}` city.
const TEMPLATES: &[&str] = &[
    "{n} wants {q} {i} sent to {c}.",
    "Please ship {q} {i} to {c} for {n}.",
    "{n} from {c} ordered {q} {i}.",
    "Send {c} {q} {i}, the buyer is {n}.",
    "New order: {q} {i} for {n} in {c}.",
    "{n} asked us to deliver {q} {i} to {c}.",
];

/// One example: the user sentence and the JSON answer.
pub fn demo_example(rng: &mut SplitMix64) -> serde_json::Value {
    let pick =
        |rng: &mut SplitMix64, list: &[&'static str]| list[rng.below(list.len() as u64) as usize];
    let name = pick(rng, NAMES);
    let item = pick(rng, ITEMS);
    let city = pick(rng, CITIES);
    let qty = 2 + rng.below(8);
    let sentence = pick(rng, TEMPLATES)
        .replace("{n}", name)
        .replace("{q}", &qty.to_string())
        .replace("{i}", &format!("{item}s"))
        .replace("{c}", city);
    let answer = json!({"name": name, "item": item, "qty": qty, "city": city});
    json!({"messages": [
        {"role": "user", "content": format!("Order: {sentence}")},
        {"role": "assistant", "content": answer.to_string()},
    ]})
}

/// Disjoint splits as JSONL texts, `sizes[i]` examples each, the same for the same seed on
/// every machine. Examples are drawn from one stream and a repeat of an earlier one is drawn
/// again, so no test example was seen in training.
pub fn demo_splits<const N: usize>(seed: u64, sizes: [usize; N]) -> [String; N] {
    let mut rng = SplitMix64::new(seed);
    let mut seen = std::collections::HashSet::new();
    sizes.map(|n| {
        let mut out = String::new();
        let mut count = 0;
        while count < n {
            let line = demo_example(&mut rng).to_string();
            if seen.insert(line.clone()) {
                out.push_str(&line);
                out.push('\n');
                count += 1;
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_splits_are_deterministic_disjoint_and_answers_are_json_of_the_sentence() {
        let [a, b] = demo_splits(7, [300, 100]);
        assert_eq!([a.clone(), b.clone()], demo_splits(7, [300, 100]));
        assert_ne!(a, demo_splits(8, [300, 100])[0]);
        let lines: Vec<&str> = a.lines().chain(b.lines()).collect();
        assert_eq!(lines.len(), 400);
        let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
        assert_eq!(unique.len(), 400, "splits share examples");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let user = v["messages"][0]["content"].as_str().unwrap();
            let answer: serde_json::Value =
                serde_json::from_str(v["messages"][1]["content"].as_str().unwrap()).unwrap();
            for key in ["name", "city"] {
                assert!(user.contains(answer[key].as_str().unwrap()), "{line}");
            }
            assert!(user.contains(&answer["qty"].to_string()), "{line}");
        }
    }
}
