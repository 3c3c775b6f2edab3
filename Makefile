# Shortcuts for the scripts in scripts/ (which need only bash and Python >= 3.10).
.PHONY: run test peers man clean
run:
	./scripts/run
test:
	./scripts/test
peers:
	./scripts/install-peers
man:
	./scripts/build-man
clean:
	rm -rf .venv build dist *.egg-info _trial_temp* .pytest_cache
