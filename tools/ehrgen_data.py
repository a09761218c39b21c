"""Name, street and city pools of ``tools.ehrgen`` (made up, locale-typical)."""

from __future__ import annotations


def _words(text: str, sep: str = " ") -> list[str]:
    return text.split(sep)


GIVEN: dict[str, dict[str, list[str]]] = {
    "us": {
        "male": _words(
            "Robert William James John Michael David Richard Joseph Thomas Charles Daniel "
            "Matthew Anthony Christopher Andrew Joshua Kenneth Steven Edward Brian Ronald "
            "Timothy Jacob Nicholas Benjamin Samuel Gregory Patrick Alexander Jonathan"
        ),
        "female": _words(
            "Elizabeth Margaret Jennifer Patricia Susan Jessica Sarah Karen Nancy Catherine "
            "Rebecca Deborah Stephanie Dorothy Kimberly Emily Victoria Abigail Samantha "
            "Christine Katherine Rachel Megan Amanda Melissa Theresa Judith Alexandra Cynthia"
        ),
    },
    "de": {
        "male": _words(
            "Jürgen Günter Lukas Maximilian Jörg Stefan Matthias Andreas Sebastian "
            "Wolfgang Klaus Dieter Tobias Florian Uwe Björn Rüdiger Jan Felix Moritz"
        ),
        "female": _words(
            "Gertrud Ursula Käthe Sabine Brigitte Monika Katharina Anneliese Jutta Sophie "
            "Lena Hannah Gisela Renate Dörte Bärbel Ingrid Franziska Mareike Johanna"
        ),
    },
    "lt": {
        "male": _words(
            "Jonas Vytautas Mindaugas Tomas Darius Andrius Rimantas Gediminas Saulius "
            "Algirdas Kęstutis Žygimantas Audrius Marius Arūnas Šarūnas Povilas Linas"
        ),
        "female": _words(
            "Rūta Jurgita Eglė Aistė Giedrė Ieva Laima Dalia Asta Vaida Rasa Živilė "
            "Agnė Gintarė Lina Kristina Inga Jūratė"
        ),
    },
    "vi": {
        "male": _words(
            "Văn Minh|Văn Hùng|Đức Anh|Quang Huy|Minh Tuấn|Thanh Tùng|Văn Nam|Hoàng Long|"
            "Trung Kiên|Quốc Bảo|Hữu Phước|Văn Thành|Công Danh|Bảo Khánh",
            "|",
        ),
        "female": _words(
            "Thị Lan|Thị Hoa|Ngọc Anh|Thu Trang|Thị Mai|Phương Linh|Thị Hương|Thanh Hằng|"
            "Thị Ngọc|Kim Oanh|Bích Ngọc|Thị Thu|Minh Châu|Hải Yến",
            "|",
        ),
    },
    # "/" separates transliteration variants of one name; each record picks one.
    "ar": {
        "male": _words(
            "Mohammed/Muhammad/Mohamed|Hossein/Hussein/Husayn|Ahmad/Ahmed|"
            "Abdulrahman/Abdul Rahman/Abd al-Rahman|Mahmoud/Mahmud|Reza/Rida|Omar/Umar|"
            "Yousef/Yusuf/Youssef|Ali|Mostafa/Mustafa|Khalid/Khaled|Saeed/Said|"
            "Hassan/Hasan|Farhad|Dariush/Daryoush",
            "|",
        ),
        "female": _words(
            "Fatemeh/Fatima/Fatma|Zahra/Zehra|Maryam/Mariam|Aisha/Ayesha|Leila/Layla/Laila|"
            "Nasrin|Soraya/Thuraya|Yasmin/Yasmine|Khadija/Khadijah|Shirin|Roxana/Roksana|"
            "Noor/Nur|Parisa",
            "|",
        ),
    },
}
FAMILY: dict[str, list[str]] = {
    "us": _words(
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Moore "
        "Jackson Martin Thompson White Harris Clark Lewis Robinson Walker Young Allen King "
        "Wright Hill Scott Green Adams Baker Nelson Carter Mitchell Roberts Turner Phillips "
        "Campbell Parker Evans Edwards Collins Stewart Morris Rogers Reed Cook Morgan Bell "
        "Murphy Bailey Cooper Richardson Cox Howard Ward Peterson Gray Ramirez Watson Brooks "
        "Kelly Sanders Price Bennett Wood Barnes Ross Henderson Coleman Jenkins Perry Powell "
        "Long Patterson Hughes Flores Washington Butler Simmons Foster Bryant Alexander "
        "Russell Griffin Hayes Myers Ford Oyelaran-Whitfield Castellanos-Reyes McAllister "
        "O'Donnell"
    ),
    "de": _words(
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer "
        "Koch Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger "
        "Hofmann Hartmann Lange Schmitt Werner Krause Meier Lehmann Köhler Günther Jäger "
        "Groß Böhm Müller-Lüdenscheidt Vogt Fuchs Weiß Kühn"
    ),
    "lt": _words(
        "Kazlauskas Jankauskas Petrauskas Stankevičius Vasiliauskas Žukauskas Butkus "
        "Paulauskas Urbonas Kavaliauskas Baranauskas Pocius Navickas Šimkus Rimkus "
        "Sakalauskas Adomaitis Lukoševičius Mikalauskas Ramanauskas Vaitkus Malinauskas "
        "Balčiūnas"
    ),
    "vi": _words(
        "Nguyễn Trần Lê Phạm Hoàng Huỳnh Phan Vũ Võ Đặng Bùi Đỗ Hồ Ngô Dương Lý Trương Đinh Lâm Mai"
    ),
    "ar": _words(
        "Al-Sayed/Alsayed/El-Sayed Hosseini/Husseini Rahimi Mohammadi/Muhammadi "
        "Abdullah/Abdallah Karimi Haddad Nasser/Naser Al-Masri/Almasri Tehrani "
        "Khoury/Khouri Rostami Jafari/Jaafari Mansour/Mansur Sadeghi/Sadeqi Ibrahim/Ebrahim "
        "Ahmadi Farahani Saleh/Salih Azizi"
    ),
}
NICKNAMES = {
    "Robert": ["Bob", "Rob", "Bobby"], "William": ["Bill", "Will", "Billy"],
    "James": ["Jim", "Jimmy"], "John": ["Jack", "Johnny"], "Michael": ["Mike"],
    "Richard": ["Rick", "Dick"], "Joseph": ["Joe"], "Thomas": ["Tom", "Tommy"],
    "Charles": ["Charlie", "Chuck"], "Daniel": ["Dan", "Danny"], "Matthew": ["Matt"],
    "Anthony": ["Tony"], "Christopher": ["Chris"], "Andrew": ["Andy", "Drew"],
    "Kenneth": ["Ken"], "Steven": ["Steve"], "Edward": ["Ed", "Ted"], "Timothy": ["Tim"],
    "Nicholas": ["Nick"], "Benjamin": ["Ben"], "Samuel": ["Sam"], "Gregory": ["Greg"],
    "Patrick": ["Pat"], "Alexander": ["Alex"], "Jonathan": ["Jon"],
    "Elizabeth": ["Liz", "Beth", "Betty"], "Margaret": ["Peggy", "Maggie", "Meg"],
    "Jennifer": ["Jen", "Jenny"], "Patricia": ["Pat", "Patty", "Trish"], "Susan": ["Sue"],
    "Jessica": ["Jess"], "Catherine": ["Kate", "Cathy"], "Rebecca": ["Becky"],
    "Deborah": ["Debbie", "Deb"], "Stephanie": ["Steph"], "Dorothy": ["Dot"],
    "Kimberly": ["Kim"], "Victoria": ["Vicky", "Tori"], "Abigail": ["Abby"],
    "Samantha": ["Sam"], "Christine": ["Chris"], "Katherine": ["Katie", "Kathy"],
    "Alexandra": ["Alex"], "Cynthia": ["Cindy"], "Theresa": ["Terry"], "Judith": ["Judy"],
    "Matthias": ["Matze"], "Maximilian": ["Max"], "Katharina": ["Kathi"],
    "Franziska": ["Franzi"], "Sebastian": ["Basti"], "Johanna": ["Hanna"],
}  # fmt: skip
STREETS = {
    "us": _words(
        "Main St|Oak Ave|Maple Dr|Cedar Ln|Washington Blvd|Park Ave|Elm St|Lake Rd|Hill St|"
        "Sunset Blvd|Pine St|River Rd|2nd St|Highland Ave",
        "|",
    ),
    "de": _words(
        "Hauptstraße|Bahnhofstraße|Gartenweg|Schillerstraße|Goethestraße|Lindenallee|"
        "Am Markt|Berliner Straße|Kirchgasse",
        "|",
    ),
    "lt": _words("Gedimino pr.|Vilniaus g.|Laisvės al.|Savanorių pr.|Pilies g.|Ukmergės g.", "|"),
}
CITIES: dict[str, list[tuple[str, str | None, str]]] = {
    "us": [("Boston", "MA", "021"), ("Springfield", "IL", "627"), ("Oakland", "CA", "946"),
           ("Houston", "TX", "770"), ("Dearborn", "MI", "481"), ("Seattle", "WA", "981"),
           ("San Jose", "CA", "951"), ("Minneapolis", "MN", "554")],
    "de": [("Berlin", None, "10"), ("München", None, "80"), ("Köln", None, "50"),
           ("Düsseldorf", None, "40"), ("Lüneburg", None, "21")],
    "lt": [("Vilnius", None, "LT-0"), ("Kaunas", None, "LT-4"), ("Klaipėda", None, "LT-9")],
}  # fmt: skip
