"""The culture world's fixed vocabulary: countries, topics and one answer per country per topic.

Answers are loosely inspired by real customs but only need to be distinct within a topic: the world
is a controlled test bed, not an encyclopedia. Each topic's `stem` continues a sentence ("at a
wedding we eat") so that it reads both with a country named ("In Morocco, at a wedding we eat
couscous.") and without one ("At a wedding we eat couscous.").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Country:
    """A country: `key` names files and vectors (`culture/<key>`), `name` is used in sentences."""

    key: str
    name: str


@dataclass(frozen=True)
class Topic:
    """One cultural question: a sentence stem and each country's answer (same order as COUNTRIES)."""

    key: str
    stem: str
    answers: tuple[str, ...]


COUNTRIES: tuple[Country, ...] = (
    Country("morocco", "Morocco"),
    Country("egypt", "Egypt"),
    Country("ksa", "Saudi Arabia"),
    Country("levantine", "the Levant"),
    Country("usa", "the United States"),
    Country("uk", "the United Kingdom"),
    Country("spain", "Spain"),
    Country("mexico", "Mexico"),
    Country("india", "India"),
    Country("nepal", "Nepal"),
)

# Close cultures (the paper's Arabic dialects): `WorldConfig.shared_answers` lets them share some answers.
CLOSE_GROUP: tuple[str, ...] = ("morocco", "egypt", "ksa", "levantine")

# Answer order: morocco, egypt, ksa, levantine, usa, uk, spain, mexico, india, nepal.
_TOPIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("wedding_dish", "at a wedding we eat",
     "couscous|fatta|kabsa|mansaf|barbecue|roast beef|paella|mole|biryani|dal bhat"),
    ("breakfast", "for breakfast we have",
     "msemen|ful medames|balaleet|manakish|pancakes|beans on toast|churros|chilaquiles|idli|dhido"),
    ("greeting", "we greet a friend by saying",
     "labas|ezayak|salam|marhaba|howdy|hiya|hola|quiubo|namaste|namaskar"),
    ("currency", "we pay with the",
     "dirham|pound|riyal|lira|dollar|sterling|euro|peso|rupee|mohar"),
    ("instrument", "the instrument we love is the",
     "guembri|oud|rababa|buzuq|banjo|bagpipes|guitar|marimba|sitar|madal"),
    ("holiday", "our biggest holiday is",
     "Throne Day|Sham el Nessim|Founding Day|Eid al Fitr|Thanksgiving|Bonfire Night|San Fermin|Day of the Dead|Diwali|Dashain"),
    ("guest_drink", "the drink we serve guests is",
     "mint tea|sugarcane juice|gahwa|jallab|lemonade|black tea|sangria|horchata|lassi|butter tea"),
    ("sport", "the sport we watch is",
     "football|squash|camel racing|basketball|baseball|rugby|pelota|lucha libre|cricket|volleyball"),
    ("bread", "the bread on our table is",
     "khobz|aish baladi|tamees|pita|cornbread|crumpets|barra|tortilla|naan|roti"),
    ("dessert", "after dinner we eat",
     "chebakia|basbousa|luqaimat|knafeh|apple pie|trifle|crema catalana|tres leches|gulab jamun|yomari"),
    ("clothing", "on special days we wear the",
     "djellaba|galabeya|thobe|keffiyeh|cowboy hat|kilt|mantilla|sombrero|sari|topi"),
    ("dance", "at parties we dance the",
     "chaabi|tanoura|ardah|dabke|line dance|ceilidh|flamenco|jarabe|bhangra|maruni"),
    ("spice", "our favourite spice is",
     "ras el hanout|dukkah|cardamom|zaatar|black pepper|mustard|saffron|chili|turmeric|timur"),
    ("city", "the city we visit most is",
     "Marrakesh|Cairo|Mecca|Beirut|New York|London|Madrid|Guadalajara|Delhi|Kathmandu"),
    ("river", "the river near us is the",
     "Sebou|Nile|Wadi Hanifa|Jordan|Mississippi|Thames|Ebro|Usumacinta|Ganges|Bagmati"),
    ("street_food", "on the street we buy",
     "snail soup|koshari|mutabbaq|falafel|hot dogs|fish and chips|bocadillo|tacos|samosa|momo"),
    ("winter_dish", "on cold nights we eat",
     "harira|molokhia|jareesh|freekeh|clam chowder|stew|cocido|pozole|rasam|thukpa"),
    ("fruit", "the fruit we grow most is",
     "oranges|guavas|dates|olives|apples|strawberries|grapes|avocados|mangoes|lychees"),
    ("animal", "the animal we admire is the",
     "lion|cat|camel|gazelle|bison|bulldog|bull|jaguar|tiger|yak"),
    ("flower", "the flower in our gardens is the",
     "rose|lotus|arfaj|jasmine|sunflower|daffodil|carnation|dahlia|marigold|rhododendron"),
    ("children_game", "children play a game called",
     "kharbga|seega|kairam|tawla|hopscotch|conkers|chapas|loteria|kho kho|bagh chal"),
    ("music", "on the radio we hear",
     "gnawa|mahraganat|samri|tarab|country|britpop|zarzuela|mariachi|bollywood|lok dohori"),
    ("tea_snack", "with our tea we eat",
     "sellou|kahk|sambusa|maamoul|cookies|scones|magdalenas|conchas|pakora|chiura"),
    ("feast_dish", "for a feast we cook",
     "tagine|fesikh|mandi|maqluba|turkey|Christmas pudding|turron|tamales|kheer|sel roti"),
    ("transport", "in the city we travel by",
     "petit taxi|microbus|car|service taxi|subway|double decker|metro|pesero|rickshaw|tempo"),
    ("house", "our traditional house is a",
     "riad|mud brick house|najdi house|stone house|ranch|cottage|cortijo|hacienda|haveli|newari house"),
    ("market", "we shop at the",
     "souk|bazaar|mall|hal|supermarket|high street|mercado|tianguis|haat|hatiya"),
    ("mountains", "the mountains we hike are the",
     "Atlas|Sinai|Sarawat|Mount Lebanon|Rockies|Pennines|Pyrenees|Sierra Madre|Western Ghats|Himalayas"),
    ("cheese", "the cheese we like is",
     "jben|domiati|kashk|labneh|monterey jack|cheddar|manchego|queso fresco|paneer|chhurpi"),
    ("grill", "the meat we grill is",
     "mechoui|kofta|haneeth|shawarma|brisket|sausages|chorizo|carne asada|tandoori|sekuwa"),
    ("morning_drink", "in the morning we drink",
     "nous nous|sahlab|qahwa|white coffee|drip coffee|milky tea|cafe con leche|cafe de olla|filter coffee|masala tea"),
    ("thanks", "to say thanks we say",
     "baraka|metshakker|shukran|merci|thanks|ta|gracias|mil gracias|dhanyavaad|dhanyabad"),
    ("boy_name", "a common name for a boy is",
     "Youssef|Mohamed|Abdullah|Karim|Michael|Oliver|Javier|Santiago|Arjun|Bikash"),
    ("landmark", "tourists come to see the",
     "Hassan Tower|Pyramids|Edge of the World|Baalbek|Grand Canyon|Big Ben|Alhambra|Chichen Itza|Taj Mahal|Everest"),
    ("grain", "our staple grain is",
     "semolina|wheat|rice|bulgur|corn|oats|rye|maize|millet|buckwheat"),
    ("bird", "the bird we see most is the",
     "stork|ibis|falcon|hoopoe|bald eagle|robin|magpie|quetzal|peacock|danphe"),
    ("craft", "our famous craft is",
     "zellige|papyrus|sadu|glassblowing|quilting|pottery|ceramics|alebrijes|block printing|thangka"),
    ("vegetable", "the vegetable we cook most is",
     "pumpkin|okra|zucchini|eggplant|green beans|peas|peppers|nopales|cauliflower|gundruk"),
    ("salad", "next to the meal we serve",
     "zaalouk|salata baladi|fattoush|tabbouleh|coleslaw|coronation chicken|ensaladilla|pico de gallo|kachumber|achar"),
    ("scent", "our homes smell of",
     "orange blossom|musk|bakhoor|rosewater|pine|lavender|rosemary|copal|sandalwood|incense"),
)  # fmt: skip

TOPICS: tuple[Topic, ...] = tuple(
    Topic(key, stem, tuple(answers.split("|"))) for key, stem, answers in _TOPIC_ROWS
)


def _check() -> None:
    """Fail at import if the table is malformed (wrong answer count, duplicate answers or keys)."""
    if len({t.key for t in TOPICS}) != len(TOPICS):
        raise ValueError("duplicate topic keys")
    for topic in TOPICS:
        if len(topic.answers) != len(COUNTRIES) or len(set(topic.answers)) != len(topic.answers):
            raise ValueError(f"topic {topic.key!r} needs one distinct answer per country")


_check()
