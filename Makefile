# vae-course: every command a learner, a teacher or CI needs.
#
#   make lab       install (once) and open the lessons in JupyterLab
#   make test      install (once), then ruff, the unit tests and every notebook (nbval)
#   make test-portable   every notebook under nbval again, on other CPU kernels
#   make course    execute every notebook into build/notebooks/, HTML into build/html/
#   make notebook NB=notebooks/01_distributions.ipynb   execute one notebook in place
#   make slides    one reveal.js deck per lesson into build/slides/ (no execution)
#   make book      the course as a website into build/book/ (no execution)
#   make assignments   graded student notebooks into build/assignments/ (nbgrader)
#   make grade ASSIGNMENT=03_elbo SUBMISSIONS=folder   scores and feedback per student
#   make clean     remove build outputs and caches (keeps .venv and data/)
#
# Each target installs what it needs into .venv the first time, and again only
# when pyproject.toml changes.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JUPYTER := $(BIN)/jupyter

LESSONS := $(sort $(wildcard notebooks/*.ipynb))
SOLUTIONS := $(sort $(wildcard notebooks/solutions/*.ipynb))
NOTEBOOKS := $(LESSONS) $(SOLUTIONS)
EXECUTED := $(patsubst notebooks/%,build/notebooks/%,$(NOTEBOOKS))
HTML := $(patsubst build/notebooks/%.ipynb,build/html/%.html,$(EXECUTED))
PACKAGE := $(wildcard vae_course/*.py)

# make course runs the full budgets; `make course SMOKE=1` runs the small ones.
SMOKE ?= 0
# Seconds one notebook cell may run before nbconvert gives up.
CELL_TIMEOUT ?= 1800

# Jupyter refuses to start as root (containers, CI images) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# The tests run in TEST_WORKERS processes (pytest-xdist), a whole file in each, so
# that a notebook's cells run in order on one kernel; TEST_WORKERS=1 runs them
# one after another.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# A kernel gets 5 minutes to start, not nbval's 60 s: a loaded CI machine, starting
# one kernel beside another worker's, once took longer than that.
NBVAL_FLAGS := --nbval-lax --nbval-current-env \
	--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-kernel-startup-timeout 300
# Widgets' state is not stored in the notebooks: JupyterLab would write its numbers
# back in another form (3 for 3.0) on every save, which git sees as a change.
EXECUTE := $(JUPYTER) nbconvert --to notebook --execute \
	--ExecutePreprocessor.timeout=$(CELL_TIMEOUT) \
	--ExecutePreprocessor.kernel_name=python3 \
	--ExecutePreprocessor.store_widget_state=False

.PHONY: help install lab test test-portable course notebook checkpoints benchmark \
	reference clean distclean

help:
	@echo "make lab       install (once) and open the lessons in JupyterLab"
	@echo "make test      ruff, unit tests and every notebook under nbval (smoke budgets)"
	@echo "make test-portable  the notebooks under nbval on other CPU kernels, 1 thread"
	@echo "make course    execute every notebook into build/, render HTML (SMOKE=1: small)"
	@echo "make notebook NB=notebooks/NN_name.ipynb   execute one notebook in place"
	@echo "make slides    one reveal.js deck per lesson into build/slides/"
	@echo "make book      the course as a website into build/book/"
	@echo "make assignments  graded student notebooks into build/assignments/"
	@echo "make grade ASSIGNMENT=03_elbo SUBMISSIONS=folder  grade into build/grades/"
	@echo "make checkpoints  retrain the two committed course models (lessons 04, 05)"
	@echo "make benchmark    time the trainer and the log-likelihood: benchmarks/README.md"
	@echo "make reference    train and evaluate the reference models, update README"
	@echo "make install   create .venv and install the course (done by the others)"
	@echo "make clean     remove build/ and caches; make distclean also removes .venv"

install: $(STAMP)

NBGRADER_PANELS := nbgrader.server_extensions.formgrader \
	nbgrader.server_extensions.validate_assignment \
	nbgrader.server_extensions.assignment_list nbgrader.server_extensions.course_list

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	@# nbgrader (make assignments, make grade) works from the command line; its
	@# JupyterLab panels are a teacher's formgrader, so make lab leaves them off.
	$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null
	$(BIN)/jupyter server extension disable --sys-prefix $(NBGRADER_PANELS) >/dev/null
	@touch $@

# Where the lessons find the data and keep the models they train, wherever their
# kernel starts (notebooks/ or notebooks/solutions/): data/ and runs/ here, unless
# VAE_COURSE_DATA names a data folder already.
DATA_FOLDER = VAE_COURSE_DATA=$${VAE_COURSE_DATA:-$(CURDIR)/data}
FOLDERS = $(DATA_FOLDER) VAE_COURSE_RUNS=$(CURDIR)/runs

# Rooted at the repository, so that the README, the package and the solutions open
# from JupyterLab's file browser; it starts in notebooks/.
# jupyter-settings/overrides.json turns autosave off, so running a lesson does not
# rewrite the committed notebook (Ctrl-S still saves); jupyter-settings/labextensions/
# lets ipywidgets run in RISE's slideshow page (both JupyterLab and RISE list it).
LAB_EXTENSIONS := $(CURDIR)/jupyter-settings/labextensions
lab: $(STAMP)
	@echo "Open the URL with ?token=... printed below (Ctrl-C twice stops the server)."
	$(FOLDERS) $(JUPYTER) lab --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/notebooks --LabApp.app_settings_dir=jupyter-settings \
		--LabApp.extra_labextensions_path=$(LAB_EXTENSIONS) \
		--RiseApp.extra_labextensions_path=$(LAB_EXTENSIONS) \
		--ip=127.0.0.1 --no-browser $(ALLOW_ROOT)

# Smoke budgets (VAE_COURSE_SMOKE=1) keep the run short; nbval compares only the
# cells tagged nbval-check-output, after tests/nbval_sanitize.cfg. The slowest tests
# are listed at the end: where the run's time goes.
test: $(STAMP)
	$(BIN)/ruff check .
	rm -rf runs/smoke
	$(FOLDERS) VAE_COURSE_SMOKE=1 $(BIN)/python -m pytest $(PARALLEL) $(NBVAL_FLAGS) \
		--durations=15 tests notebooks

# The checked outputs must not depend on the CPU. PyTorch, MKL and oneDNN pick their
# kernels from the processor and each sums floats in its own order, so this runs the
# notebooks again on a kernel level unlike this machine's own (the plain C++ kernels)
# and one thread; tests/portability.py prints the variables and compares every level.
test-portable: $(STAMP)
	rm -rf runs/smoke
	@setting="$$($(BIN)/python tests/portability.py --environment)" && \
	echo "nbval under $$setting" && \
	env $$setting $(FOLDERS) VAE_COURSE_SMOKE=1 \
		$(BIN)/python -m pytest $(PARALLEL) $(NBVAL_FLAGS) notebooks

course: $(HTML)

# Keep the executed notebooks: they are a product of make course, not a by-product.
.SECONDARY: $(EXECUTED)

# Models the lessons train go to build/runs/, not runs/: make course writes only
# into build/.
build/notebooks/%.ipynb: notebooks/%.ipynb $(PACKAGE) $(STAMP)
	@mkdir -p $(@D)
	$(DATA_FOLDER) VAE_COURSE_RUNS=$(CURDIR)/build/runs VAE_COURSE_SMOKE=$(SMOKE) \
		$(EXECUTE) --output-dir $(@D) $<

build/html/%.html: build/notebooks/%.ipynb
	@mkdir -p $(@D)
	$(JUPYTER) nbconvert --to html --output-dir $(@D) $<

# Full budgets whatever CI or VAE_COURSE_SMOKE say: this is what gets committed.
notebook: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make notebook NB=notebooks/NN_name.ipynb"; exit 2; }
	@test -f "$(NB)" || { echo "no such notebook: $(NB)"; exit 2; }
	$(FOLDERS) VAE_COURSE_SMOKE=0 $(EXECUTE) --inplace "$(NB)"

# The two small models that later lessons load: lesson 04 trains the default one and
# lesson 05 the 2-D one, so regenerating them means re-executing those lessons. The
# lessons save into runs/ (they never write checkpoints/); copying is the commit step.
checkpoints: $(STAMP)
	rm -f checkpoints/mnist_default.pt checkpoints/mnist_latent2.pt \
		runs/mnist_default.pt runs/mnist_latent2.pt
	$(FOLDERS) VAE_COURSE_SMOKE=0 $(EXECUTE) --inplace notebooks/04_training.ipynb
	$(FOLDERS) VAE_COURSE_SMOKE=0 $(EXECUTE) --inplace notebooks/05_visualization.ipynb
	cp runs/mnist_default.pt runs/mnist_latent2.pt checkpoints/

# Train seconds per epoch of the Deep Bayes tutorial's DataLoader loop, vc.train.fit
# and a hand-written loop, alternating in one process; the importance-sampled
# log-likelihood against the matmul rate; then what busy cores cost each thread count.
# Both write their results into benchmarks/README.md.
benchmark: $(STAMP)
	$(BIN)/python benchmarks/epoch_speed.py --epochs 5
	$(BIN)/python benchmarks/busy_machine.py --steps 100 --repeats 3

# Trains the reference models through the CLI (GPU when present), keeps the epoch
# each chose on the validation images in checkpoints/reference/, evaluates them on
# the test images with K=5000 importance samples and writes the table into README.md.
reference: $(STAMP)
	$(BIN)/python benchmarks/reference.py $(REFERENCE_FLAGS)

# --- slides: rendered by another target, added here -------------------------

# One reveal.js deck per lesson (not the solutions), from the committed outputs:
# nothing is executed. The decks need no network, to build or to present: reveal.js
# and MathJax are copied from installed packages into build/slides/, and the
# template and settings live in deck/.
SLIDES := $(patsubst notebooks/%.ipynb,build/slides/%.slides.html,$(LESSONS))
DECK_FILES := deck/jupyter_nbconvert_config.py $(wildcard deck/offline-reveal/*)
# Where the installed packages keep reveal.js 5 and MathJax 2.7.
PACKAGE_DIR = $(shell $(BIN)/python -c "import importlib.util as u; \
	print(u.find_spec('$(1)').submodule_search_locations[0])")

.PHONY: slides
slides: $(SLIDES) build/slides/reveal.js/.copied build/slides/mathjax/.copied
	@echo "Decks in build/slides/: open one in a browser; S opens the speaker notes."

build/slides/reveal.js/.copied: | $(STAMP)
	rm -rf $(@D) && mkdir -p $(@D)
	cp -R "$(call PACKAGE_DIR,sphinx_revealjs)/_static/revealjs/dist" \
		"$(call PACKAGE_DIR,sphinx_revealjs)/_static/revealjs/plugin" \
		"$(call PACKAGE_DIR,sphinx_revealjs)/_static/revealjs/LICENSE" $(@D)/
	@touch $@

build/slides/mathjax/.copied: | $(STAMP)
	rm -rf $(@D) && mkdir -p $(dir $(@D))
	cp -R "$(call PACKAGE_DIR,jupyter_server_mathjax)/static" $(@D)
	@touch $@

build/slides/%.slides.html: notebooks/%.ipynb $(DECK_FILES) | $(STAMP)
	@mkdir -p $(@D)
	$(JUPYTER) nbconvert --to slides --config deck/jupyter_nbconvert_config.py \
		--output-dir $(@D) $<

# The course as a website (Sphinx, myst-nb, sphinx-book-theme) from the committed,
# executed notebooks: nothing is executed, and the site reads offline (MathJax is
# copied into it). Sphinx reads only its source folder, so the lessons are copied
# next to book/'s files in build/book-src/ first.
.PHONY: book
book: | $(STAMP)
	rm -rf build/book-src && mkdir -p build/book-src
	cp -R book/. build/book-src/
	cp -R notebooks build/book-src/notebooks
	$(BIN)/sphinx-build -q -b html build/book-src build/book
	@echo "Website in build/book/: open build/book/index.html in a browser."

# --- assignments: graded notebooks, built and graded with nbgrader ------------

# One student notebook per assignments/NN_name.toml into build/assignments/, with
# nbgrader's course folder beside it (build/assignments/course/).
.PHONY: assignments grade
assignments: | $(STAMP)
	$(BIN)/python assignments/build_assignments.py

# Each STUDENT.ipynb in SUBMISSIONS, graded in a kernel and a working copy of its
# own: build/grades/ASSIGNMENT/scores.csv and feedback/STUDENT.html.
grade: | $(STAMP)
	@test -n "$(ASSIGNMENT)" -a -n "$(SUBMISSIONS)" || { echo "usage: make grade \
	ASSIGNMENT=03_elbo SUBMISSIONS=folder-of-STUDENT.ipynb"; exit 2; }
	$(BIN)/python assignments/build_assignments.py
	$(BIN)/python assignments/grade.py "$(ASSIGNMENT)" "$(SUBMISSIONS)"

# -----------------------------------------------------------------------------

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -exec rm -rf {} +

# Also removes the virtual environment; the next target reinstalls it.
distclean: clean
	rm -rf $(VENV) *.egg-info
