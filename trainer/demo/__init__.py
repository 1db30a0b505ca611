"""The demo: vectors trained and evaluated per country on the culture world (`report`), the Table 7 analog over
seeds (`compare`), and the child processes both fan out to (`fanout`, `report_worker`)."""
