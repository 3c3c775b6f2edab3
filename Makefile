# Shortcuts for the scripts in scripts/ (which need only bash and Python >= 3.10).
.PHONY: run test peers clean
run:
	./scripts/run
test:
	./scripts/test
peers:
	./scripts/install-peers
clean:
	rm -rf .venv build dist *.egg-info _trial_temp* .pytest_cache
