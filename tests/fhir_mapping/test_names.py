"""Table tests of the name normalizers, with real multilingual names."""

from __future__ import annotations

import pytest

from fhir_mapping import nickname_key, nickname_keys, normalize_name, phonetic_key
from fhir_mapping._data import nickname_pairs
from fhir_mapping.search import fold_name

MIN_NICKNAME_PAIRS = 150


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("Müller", "muller"),  # German
        ("Šimkus", "simkus"),  # Lithuanian
        ("Žukauskienė", "zukauskiene"),
        ("Nguyễn", "nguyen"),  # Vietnamese
        ("Trần Thị", "tran thi"),
        ("Шевченко", "shevchenko"),  # Cyrillic, transliterated
        ("Παπαδόπουλος", "papadopoylos"),  # Greek, transliterated
        ("王", "wang"),  # Chinese, transliterated
        ("Gómez-Ruíz", "gomez ruiz"),  # Spanish, hyphenated
        ("O'Brien", "obrien"),
        ("D\u2019Angelo", "dangelo"),
        ("ßtraße", "sstrasse"),
        ("Mu\u0308ller", "muller"),  # decomposed umlaut, as some systems send it
        ("\uff2d\u00fcller", "muller"),  # full-width capital M
    ],
)
def test_fold_name(raw: str, folded: str) -> None:
    assert fold_name(raw) == folded


@pytest.mark.parametrize(
    ("family", "folded", "alternates"),
    [
        ("Müller", "muller", ["mueller"]),
        ("Mueller", "mueller", ["muller"]),
        ("Schröder", "schroder", ["schroeder"]),
        (
            "Müller-Lüdenscheidt",
            "muller ludenscheidt",
            ["mueller luedenscheidt", "mullerludenscheidt"],
        ),
        ("Šimkus", "simkus", []),
        ("Mu\u0308ller", "muller", ["mueller"]),
        ("de la Cruz", "de la cruz", ["delacruz"]),
    ],
)
def test_family_alternates_cover_both_german_spellings(
    family: str, folded: str, alternates: list[str]
) -> None:
    name = normalize_name({"family": family})
    assert (name.family_folded, name.family_alternates) == (folded, alternates)


@pytest.mark.parametrize(
    ("family", "tokens"),
    [
        ("García López", ["garcia", "lopez"]),  # Spanish double surname
        ("García y López", ["garcia", "lopez"]),
        ("de la Cruz", ["cruz"]),
        ("van der Berg", ["berg"]),  # Dutch
        ("von Trapp", ["trapp"]),  # German
        ("al-Rashid", ["rashid"]),  # Arabic
        ("El-Amin", ["amin"]),
        ("bin Laden", ["laden"]),
        ("Ben-David", ["david"]),
        ("Abu Bakr", ["bakr"]),
        ("Smith-Jones", ["smith", "jones"]),
        ("Van", ["van"]),  # a surname that is only a particle keeps it
    ],
)
def test_family_tokens_split_compounds_and_drop_particles(family: str, tokens: list[str]) -> None:
    assert normalize_name({"family": family}).family_tokens == tokens


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("Bob", "robert"),
        ("Robert", "robert"),
        ("Bill", "william"),
        ("Liz", "elizabeth"),
        ("Kate", "katherine"),
        ("Catherine", "katherine"),
        ("Mohammed", "mohammed"),
        ("Muhammad", "mohammed"),
        ("Mohamed", "mohammed"),
        ("Mohammad", "mohammed"),
        ("Hossein", "hossein"),  # Persian
        ("Hussein", "hossein"),  # Arabic
        ("Husain", "hossein"),
        ("Youssef", "yusuf"),
        ("Fatemeh", "fatemeh"),  # not in the table: its own key
        ("Mary Ann", "mary ann"),
    ],
)
def test_nickname_key(given: str, key: str) -> None:
    name = normalize_name({"family": "X", "given": [given]})
    assert name.given_canonical == [key]
    assert nickname_key(fold_name(given)) == key


def test_nickname_table_is_data_with_enough_pairs() -> None:
    pairs = nickname_pairs()
    assert len(pairs) >= MIN_NICKNAME_PAIRS
    for canonical, variant in pairs:
        assert nickname_key(nickname_key(variant)) == nickname_key(variant)
        assert canonical in nickname_keys(variant)


def test_ambiguous_nickname_lists_every_key() -> None:
    assert {"alexander", "alexandra"} <= nickname_keys("sandy") | nickname_keys("alex") | {
        nickname_key("alexandra")
    }
    assert "alexander" in nickname_keys("alex")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("smith", "smyth"),
        ("catherine", "kathryn"),
        ("mohammed", "muhammad"),
        ("hossein", "hussein"),
        ("muller", "mueller"),
        ("schroder", "schroeder"),
        ("stephen", "steven"),
        ("garcia", "garsia"),
    ],
)
def test_phonetic_key_groups_spelling_variants(one: str, other: str) -> None:
    assert phonetic_key(one) == phonetic_key(other)


def test_phonetic_key_keeps_words_apart() -> None:
    assert phonetic_key("garcia lopez").count(" ") == 1
    assert phonetic_key("") == ""
    assert phonetic_key("smith") != phonetic_key("jones")


@pytest.mark.parametrize(
    ("raw", "family_first"),
    [
        ({"family": "Nguyễn", "given": ["Văn", "An"], "text": "Nguyễn Văn An"}, True),
        ({"family": "Nagy", "given": ["János"], "text": "Nagy János"}, True),  # Hungarian
        ({"family": "王", "given": ["小明"], "text": "王小明"}, True),  # Chinese, no spaces
        ({"family": "Nguyen", "given": ["An"], "text": "An Nguyen"}, False),
        ({"family": "SMART", "given": ["NANCY"], "text": "SMART, NANCY"}, False),  # "Last, First"
        ({"family": "Smith", "given": ["John"]}, False),
    ],
)
def test_family_first_order_is_recognised_from_text(raw: dict, family_first: bool) -> None:
    assert normalize_name(raw).family_first is family_first


def test_text_only_names_are_split() -> None:
    vietnamese = normalize_name({"text": "Trần Thị Mai"})
    assert (vietnamese.family_folded, vietnamese.given_folded, vietnamese.family_first) == (
        "tran",
        ["thi mai"],
        True,
    )
    western = normalize_name({"text": "Mary Ann Smith"})
    assert (western.family_folded, western.given_folded) == ("smith", ["mary ann"])
    comma = normalize_name({"text": "Smith, Bob"})
    assert (comma.family_folded, comma.given_canonical) == ("smith", ["robert"])


@pytest.mark.parametrize(
    ("raw", "swapped"),
    [
        ({"family": "John", "given": ["Smith"]}, True),
        ({"family": "Robert", "given": ["Garcia"]}, True),
        ({"family": "Smith", "given": ["John"]}, False),
        ({"family": "James", "given": ["Thomas"]}, False),  # both could be given names
        ({"family": "Nguyen", "given": ["Tran"], "text": "Nguyen Tran"}, False),
    ],
)
def test_swapped_given_and_family_are_flagged(raw: dict, swapped: bool) -> None:
    assert normalize_name(raw).swapped_suspect is swapped


@pytest.mark.parametrize(
    ("raw", "suffix", "tokens"),
    [
        ({"family": "Smith", "suffix": ["Jr."]}, "jr", ["smith"]),
        ({"family": "Smith", "suffix": ["Senior"]}, "sr", ["smith"]),
        ({"family": "Smith", "suffix": ["PhD", "III"]}, "iii", ["smith"]),
        ({"family": "Smith Jr"}, "jr", ["smith"]),  # suffix typed into the family name
        ({"family": "Smith II"}, "ii", ["smith"]),
        ({"family": "Smith"}, None, ["smith"]),
    ],
)
def test_generational_suffix(raw: dict, suffix: str | None, tokens: list[str]) -> None:
    name = normalize_name(raw)
    assert (name.suffix_normalized, name.family_tokens) == (suffix, tokens)
    assert name.family_folded == " ".join(tokens)


def test_name_keeps_use_period_and_original_values() -> None:
    raw = {
        "use": "maiden",
        "family": "Windsor",
        "given": ["Peter", "James"],
        "prefix": ["Mr"],
        "period": {"end": "2002"},
    }
    name = normalize_name(raw)
    assert (name.use, name.family, name.given, name.prefix) == raw_values(raw)
    assert name.period is not None and name.period.end == "2002"


def raw_values(raw: dict) -> tuple:
    return raw["use"], raw["family"], raw["given"], raw["prefix"]
