function(doc) {
  if (doc.doc_type == "SystemRecord" && doc.system_packages) {
    emit(doc.system_name, doc.system_packages);
  }
}
