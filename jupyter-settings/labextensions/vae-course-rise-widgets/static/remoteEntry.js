// Lets the ipywidgets extension (@jupyter-widgets/jupyterlab-manager) load in the
// slideshow page of jupyterlab-rise, so that widgets run in the slides.
//
// RISE's page is an application of its own, with fewer JupyterLab packages than
// JupyterLab itself; it lacks @jupyterlab/console, which the widgets extension
// imports only for its optional console tracker. Without it the extension fails to
// load ("Shared module @jupyterlab/console doesn't exist in shared scope default")
// and every widget shows as text. This is a module-federation container, like every
// JupyterLab extension's remoteEntry.js: when the page initialises it, it adds a
// stand-in for @jupyterlab/console to the shared scope, holding the tracker's token
// and nothing else (no plugin provides the token, so the widgets run without a
// console tracker). JupyterLab itself provides the package, and there this does
// nothing.
(function () {
  'use strict';
  var NAME = 'vae-course-rise-widgets';
  var MISSING = '@jupyterlab/console';

  function anyVersion(versions) {
    return versions[Object.keys(versions)[0]];
  }

  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = {
    init: function (shareScope) {
      var coreutils = shareScope['@lumino/coreutils'];
      var application = shareScope['@jupyterlab/application'];
      if (shareScope[MISSING] || !coreutils || !application) {
        return;
      }
      var module = null;
      var versions = {};
      versions[Object.keys(application)[0]] = {
        from: NAME,
        eager: false,
        get: function () {
          return anyVersion(coreutils).get().then(function (factory) {
            var Token = factory().Token;
            module = module || {
              IConsoleTracker: new Token('@jupyterlab/console:IConsoleTracker')
            };
            return function () {
              return module;
            };
          });
        }
      };
      shareScope[MISSING] = versions;
    },
    get: function (request) {
      return Promise.reject(new Error(NAME + ' exposes no module ' + request));
    }
  };
})();
