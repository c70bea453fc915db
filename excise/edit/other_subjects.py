"""More subjects to protect: names of the bundled facts' kinds that no bundled fact is about.

An edit protects other subjects' keys in its fact's prompt (:func:`excise.edit.keys.contrast_subjects`)
and draws them from the bundled facts first. Those run short when many facts are edited together:
the subjects of the facts being edited, and every subject their probes name, are left out so the
probes stay held out. These names, grouped by the kind of subject each bundled relation is about,
come after the bundled subjects (a name that is also a bundled subject is skipped there as a
repeat).
"""

from __future__ import annotations

RELATION_KINDS = {
    "capital": "country", "continent": "country", "currency": "country", "language": "country",
    "city_country": "city", "company_country": "company", "author": "book",
    "landmark_city": "landmark", "profession": "person", "sport": "person",
}
"""The kind of subject each bundled relation is about."""

OTHER_SUBJECTS: dict[str, tuple[str, ...]] = {
    "country": (
        "Albania", "Algeria", "Angola", "Armenia", "Azerbaijan", "Bahrain", "Belarus", "Bhutan",
        "Bolivia", "Bosnia and Herzegovina", "Botswana", "Brunei", "Cameroon", "Costa Rica",
        "Cyprus", "Dominican Republic", "Ecuador", "El Salvador", "Estonia", "Ethiopia", "Fiji",
        "Guatemala", "Haiti", "Honduras", "Indonesia", "Jamaica", "Kazakhstan", "Kuwait",
        "Kyrgyzstan", "Laos", "Latvia", "Lebanon", "Libya", "Lithuania", "Luxembourg",
        "Madagascar", "Malaysia", "Mali", "Malta", "Moldova", "Montenegro", "Morocco",
        "Mozambique", "Myanmar", "Namibia", "Nicaragua", "North Macedonia", "Oman", "Panama",
        "Paraguay", "Qatar", "Rwanda", "Saudi Arabia", "Senegal", "Singapore", "Slovakia",
        "Slovenia", "Somalia", "Sri Lanka", "Sudan", "Tajikistan", "Tanzania", "Tunisia",
        "Turkmenistan", "Uganda", "Uruguay", "Uzbekistan", "Yemen", "Zambia", "Zimbabwe",
    ),
    "city": (
        "Boston", "Chicago", "Houston", "Seattle", "Philadelphia", "Dallas", "Miami", "Detroit",
        "San Diego", "Denver", "Calgary", "Quebec City", "Glasgow", "Birmingham", "Leeds",
        "Bristol", "Cologne", "Stuttgart", "Dresden", "Leipzig", "Düsseldorf", "Turin",
        "Bologna", "Genoa", "Palermo", "Valencia", "Bilbao", "Malaga", "Toulouse", "Nice",
        "Bordeaux", "Strasbourg", "Rotterdam", "Utrecht", "Gothenburg", "Malmö", "Bergen",
        "Gdansk", "Wroclaw", "Brno", "Graz", "Basel", "Lausanne", "Thessaloniki", "Izmir",
        "Nagoya", "Yokohama", "Sapporo", "Busan", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan",
        "Chennai", "Kolkata", "Hyderabad", "Lahore", "Casablanca", "Durban", "Brisbane", "Perth",
        "Adelaide", "Christchurch", "Guadalajara", "Monterrey", "Córdoba", "Rosario",
        "Valparaíso", "Recife", "Cali",
    ),
    "company": (
        "Apple", "Microsoft", "Google", "Amazon", "IBM", "Intel", "Coca-Cola", "Boeing", "Ford",
        "General Motors", "Volkswagen", "Audi", "Mercedes-Benz", "Adidas", "Puma", "Bosch",
        "SAP", "Nestlé", "Rolex", "Philips", "Heineken", "IKEA", "Volvo", "Nokia", "Ericsson",
        "Lego", "Renault", "Peugeot", "Michelin", "L'Oréal", "Fiat", "Gucci", "Prada", "Honda",
        "Sony", "Panasonic", "Mitsubishi", "Nissan", "Hyundai", "LG", "Huawei", "Lenovo",
        "Tencent", "Rolls-Royce", "HSBC", "Unilever", "Airbus", "Spotify",
    ),
    "book": (
        "War and Peace", "Anna Karenina", "Crime and Punishment", "Don Quixote",
        "Les Misérables", "The Odyssey", "Jane Eyre", "Wuthering Heights", "Great Expectations",
        "Oliver Twist", "Brave New World", "Animal Farm", "Ulysses", "The Trial",
        "The Metamorphosis", "Catch-22", "Fahrenheit 451", "The Hobbit", "The Grapes of Wrath",
        "Of Mice and Men", "Little Women", "Treasure Island", "Robinson Crusoe",
        "Gulliver's Travels", "The Little Prince", "Alice's Adventures in Wonderland",
        "The Jungle Book", "Sense and Sensibility", "Dune", "The Da Vinci Code", "The Alchemist",
        "Madame Bovary", "The Count of Monte Cristo", "The Three Musketeers", "Heart of Darkness",
        "Mrs Dalloway", "Walden", "Beloved",
    ),
    "landmark": (
        "Statue of Liberty", "Empire State Building", "Big Ben", "Stonehenge", "Machu Picchu",
        "Christ the Redeemer", "Great Wall of China", "Mount Rushmore", "Space Needle",
        "Neuschwanstein Castle", "Alhambra", "Westminster Abbey", "St. Paul's Cathedral",
        "Palace of Versailles", "Mont Saint-Michel", "Sacré-Cœur", "Musée d'Orsay",
        "Uffizi Gallery", "Doge's Palace", "Rialto Bridge", "Charles Bridge", "Schönbrunn Palace",
        "Atomium", "Red Square", "Hermitage Museum", "Bolshoi Theatre", "Petra", "Angkor Wat",
        "Sydney Harbour Bridge", "Burj Al Arab", "Marina Bay Sands", "Tokyo Tower",
        "Meiji Shrine", "Table Mountain", "Chichen Itza", "Times Square", "Lincoln Memorial",
        "Pyramids of Giza",
    ),
    "person": (
        "Isaac Newton", "Galileo Galilei", "Marie Curie", "Charles Darwin",
        "Johann Sebastian Bach", "Richard Wagner", "Giuseppe Verdi", "Michelangelo", "Rembrandt",
        "Salvador Dalí", "Andy Warhol", "Napoleon Bonaparte", "Winston Churchill",
        "Abraham Lincoln", "Florence Nightingale", "Alexander Fleming", "Louis Pasteur",
        "Alan Turing", "Ada Lovelace", "Nicolaus Copernicus", "Friedrich Nietzsche",
        "René Descartes", "Confucius", "Michael Jordan", "Roger Federer", "Serena Williams",
        "Tiger Woods", "Muhammad Ali", "Pelé", "Diego Maradona", "Michael Phelps",
        "Wayne Gretzky", "Babe Ruth", "LeBron James", "Rafael Nadal", "Tom Brady",
        "Lewis Hamilton", "Michael Schumacher",
    ),
}
"""Subjects by kind; none is a subject of the bundled facts when this was written."""


def other_subjects(relation: str) -> list[str]:
    """The names above, those of ``relation``'s kind first."""
    kind = RELATION_KINDS.get(relation)
    kinds = sorted(OTHER_SUBJECTS, key=lambda k: k != kind)
    return [name for k in kinds for name in OTHER_SUBJECTS[k]]
